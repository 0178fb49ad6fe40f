"""``--kind prompt-cam``: Prompt-CAM (Chowdhury et al., CVPR 2025) on a frozen ViT.

Deep visual prompt tuning with one prompt per class: every block up to ``--layer`` receives, after
the model's own tokens, one learnable token per class, and drops their outputs again (the next
block gets fresh ones). At ``--layer`` each class prompt's output goes through a LayerNorm and one
linear score shared by all classes, which gives that class's logit; so a class can only score
high by what its own prompt gathered, and where that prompt attends in the last block, per head,
is the class's trait map. The model's weights never change.

Prompts go in through the layer abstraction (:mod:`traitlens.backbones.prompts`), attention is read
through :mod:`traitlens.backbones.attention`: no per-model code. The original places the prompts
before the CLS token; attention does not depend on token order (absolute position embeddings are
added before the first block), so appending them leaves the model's own token positions intact.
Where the original reuses the model's final norm, a LayerNorm of the head's own is trained here,
since which module is a model's final norm is not part of the layer abstraction.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from traitlens.backbones import Backbone
from traitlens.backbones.attention import attention_probs
from traitlens.backbones.prompts import appended_tokens, check_appended_tokens
from traitlens.errors import LayerError
from traitlens.heads.errors import HeadError
from traitlens.heads.trainable import ClassQueryHead, blur_rows, register_head_kind


def _prompted_layers(backbone: Backbone, layer: str) -> tuple[str, ...]:
    """Every layer from the first to ``layer``: deep prompts enter each block."""
    names = backbone.layer_names
    return tuple(names[: names.index(layer) + 1])


@register_head_kind
class PromptCAMHead(ClassQueryHead):
    kind = "prompt-cam"
    summary = ("Prompt-CAM: one learnable prompt per class in every block up to --layer; each class prompt's output "
               "scored by one shared linear; its attention in --layer, per head, is the class's map (ViTs)")

    def __init__(self, class_names: tuple[str, ...], layer: str, blocks: tuple[str, ...], width: int, backbone: Backbone) -> None:
        super().__init__(class_names, layer)
        self.blocks = blocks
        self.layout = backbone.layer(layer).layout
        # VPT's Xavier-uniform range for prompts: they enter next to tokens of the same width
        bound = math.sqrt(6.0 / (len(class_names) + width))
        self.prompts_lcd = nn.Parameter(torch.empty(len(blocks), len(class_names), width).uniform_(-bound, bound))
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)

    @classmethod
    def build(cls, backbone: Backbone, class_names: tuple[str, ...], layer: str, settings: dict[str, Any]) -> ClassQueryHead:
        if settings:
            raise HeadError(f"a prompt-cam head has no settings of its own, got {', '.join(map(str, settings))}")
        blocks = _prompted_layers(backbone, layer)
        try:
            check_appended_tokens(backbone, blocks)
        except LayerError as error:
            raise HeadError(f"Prompt-CAM cannot apply to {backbone.spec}: {error}") from error
        return cls(class_names, layer, blocks, backbone.layer(layer).width, backbone)

    def settings(self) -> dict[str, Any]:
        return {}

    def _run(self, backbone: Backbone, pixels_bchw: torch.Tensor, read_attention: bool,
             blurred: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_tokens = self.layout.n_tokens
        edit = None
        if blurred is not None:
            targets_b, blurred_bh = blurred
            edit = lambda probs_bhqk: blur_rows(probs_bhqk, n_tokens + targets_b.to(probs_bhqk.device), blurred_bh)  # noqa: E731
        with ExitStack() as stack:
            outputs = stack.enter_context(appended_tokens(backbone, dict(zip(self.blocks, self.prompts_lcd, strict=True))))
            attention = stack.enter_context(attention_probs(backbone, self.layer, edit)) if read_attention or edit else None
            backbone.run_until(pixels_bchw, self.layer)
        logits_bc = self.score(self.norm(outputs[self.layer])).squeeze(-1)
        if attention is None:
            return logits_bc, None
        # rows: the class prompts' queries (after the model's tokens); columns: the patches
        probs_bhqk = attention["probs"]
        return logits_bc, probs_bhqk[:, :, n_tokens:, self.layout.n_prefix:n_tokens]

    def logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return self._run(backbone, pixels_bchw, False, None)[0]

    def attention(self, backbone: Backbone, pixels_bchw: torch.Tensor,
                  blurred: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits_bc, attention_bhcp = self._run(backbone, pixels_bchw, True, blurred)
        assert attention_bhcp is not None
        return logits_bc, attention_bhcp
