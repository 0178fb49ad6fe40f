"""The trained part of a model: the parameters a fine-tuning method trains, as one checkpointable
unit (:class:`traitlens.checkpoints.Checkpointed`) and as the tensors a fine-tuned folder keeps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class TrainedParameters:
    """The parameters of ``model`` whose names ``is_trained`` accepts; they alone need gradients."""

    def __init__(self, model: nn.Module, is_trained: Callable[[str], bool]) -> None:
        self.named = {name: parameter for name, parameter in model.named_parameters() if is_trained(name)}
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in self.named)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.named.values())

    def count(self) -> int:
        return sum(parameter.numel() for parameter in self.named.values())

    def freeze(self) -> None:
        for parameter in self.named.values():
            parameter.requires_grad_(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach() for name, parameter in self.named.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if set(state_dict) != set(self.named):
            raise ValueError(f"the saved parameters are not those trained ({len(state_dict)} saved, {len(self.named)} trained)")
        with torch.no_grad():
            for name, parameter in self.named.items():
                parameter.copy_(state_dict[name])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trained parameters as contiguous CPU tensors (what ``finetuned.safetensors`` holds)."""
        return {name: tensor.cpu().contiguous() for name, tensor in self.state_dict().items()}
