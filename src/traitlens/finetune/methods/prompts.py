"""Visual prompt tuning (Jia et al., ECCV 2022): learnable tokens join a ViT's token sequence.

``vpt-deep`` gives every block fresh prompts of its own; ``vpt-shallow`` puts prompts in before the
first block and lets each block pass its prompts' outputs on to the next, as VPT-shallow carries
them through the network. Prompts go in through the layer abstraction
(:func:`traitlens.backbones.appended_tokens`: appended after the model's tokens, dropped from every
block's output), so captures, edits and token layouts see the model's own tokens, and any ViT of
ours takes them; a model whose blocks do not take extra tokens (a CNN) is refused in one line.
The hooks stay on the model for its life: the prompts are part of the adapted model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import ClassVar

import torch
from torch import nn

from traitlens.backbones import Backbone, appended_tokens, check_appended_tokens
from traitlens.errors import LayerError
from traitlens.finetune.errors import FinetuneError
from traitlens.finetune.methods.base import FinetuneMethod, register_method

MODULE = "traitlens_prompts"
"""The name of the prompts' module inside the adapted model."""


class _Prompts(nn.Module):
    def __init__(self, n_sets: int, length: int, width: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (length + width))  # Xavier-uniform, as VPT initializes its prompts
        self.prompts_lpd = nn.Parameter(torch.empty(n_sets, length, width).uniform_(-bound, bound))
        self.hooks = ExitStack()
        """The model's prompt hooks, kept for the module's life."""


class _VisualPrompts(FinetuneMethod):
    defaults: ClassVar[dict[str, int]] = {"prompt_length": 10}
    deep: bool

    def prepare(self, backbone: Backbone) -> None:
        layers = backbone.layer_names
        try:
            check_appended_tokens(backbone, layers)
        except LayerError as error:
            raise FinetuneError(f"{self.name} cannot apply to {backbone.spec}: {error}") from error
        widths = {backbone.layer(name).width for name in layers}
        if len(widths) != 1:
            raise FinetuneError(f"{self.name} needs blocks of one width; {backbone.spec} has widths {sorted(widths)}")
        module = _Prompts(len(layers) if self.deep else 1, self.settings["prompt_length"], widths.pop())
        backbone.model.add_module(MODULE, module)
        passed_on: list[dict[str, torch.Tensor]] = []
        """The block outputs at the prompts' positions (filled as the blocks run), once hooked."""
        tokens: dict[str, Callable[[], torch.Tensor]] = {}
        for number, name in enumerate(layers):
            # asked for at each forward: the parameter moves with the model, and each forward has a graph of its own
            if self.deep or number == 0:
                tokens[name] = lambda number=number: module.prompts_lpd[number]  # type: ignore[misc]
            else:
                tokens[name] = lambda before=layers[number - 1]: passed_on[0][before]  # type: ignore[misc]
        passed_on.append(module.hooks.enter_context(appended_tokens(backbone, tokens)))

    def trains(self, name: str) -> bool:
        return name.startswith(f"{MODULE}.")


@register_method
class ShallowPrompts(_VisualPrompts):
    name = "vpt-shallow"
    summary = "VPT-shallow: --prompt-length tokens enter before the first block and pass through all (ViTs)"
    deep = False


@register_method
class DeepPrompts(_VisualPrompts):
    name = "vpt-deep"
    summary = "VPT-deep: --prompt-length fresh tokens enter every block (ViTs)"
    deep = True
