"""``--kind linear``: a linear probe on one layer's pooled tokens, trained through the frozen
model like the class-query heads (so their accuracies compare on the same images, split and
optimizer). Saved in the format of ``traitlens probe``'s heads, which every ``--head`` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from traitlens.backbones import Backbone
from traitlens.heads.errors import HeadError
from traitlens.heads.kinds.settings import choice_setting
from traitlens.heads.linear_head import LinearHead, save_head
from traitlens.heads.pooling import POOLINGS, check_pooling, pool_tokens
from traitlens.heads.trainable import TrainableHead, register_head_kind


@register_head_kind
class LinearProbe(TrainableHead):
    kind = "linear"
    summary = "a linear probe on --layer's pooled tokens (--pooling cls or mean)"
    options = ("pooling",)

    def __init__(self, class_names: tuple[str, ...], layer: str, width: int, pooling: str, backbone: Backbone) -> None:
        super().__init__(class_names, layer)
        self.pooling = pooling
        self.layout = backbone.layer(layer).layout
        self.linear = nn.Linear(width, len(class_names))

    @classmethod
    def build(cls, backbone: Backbone, class_names: tuple[str, ...], layer: str, settings: dict[str, Any]) -> TrainableHead:
        layout = backbone.layer(layer).layout
        pooling = choice_setting(settings, "pooling", POOLINGS, "cls" if layout.has_cls else "mean")
        check_pooling(layout, "all", pooling, f"layer {layer} of {backbone.spec}")  # type: ignore[arg-type]
        return cls(class_names, layer, backbone.layer(layer).width, pooling, backbone)

    def settings(self) -> dict[str, Any]:
        return {"pooling": self.pooling}

    def _pooled(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        with backbone.capture(self.layer, detach=False) as captured:
            backbone.run_until(pixels_bchw, self.layer)
        return pool_tokens(captured[self.layer], self.layout, "all", self.pooling)  # type: ignore[arg-type]

    def logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return self.linear(self._pooled(backbone, pixels_bchw))

    def training_logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # only the linear layer learns: no graph through the model
            pooled_bd = self._pooled(backbone, pixels_bchw)
        return self.linear(pooled_bd)

    def save(self, directory: Path, model: dict[str, Any], info: dict[str, Any]) -> None:
        """As a :class:`LinearHead`, the file every ``--head`` and ``--patch-probe`` reads."""
        weight_cd, bias_c = self.linear.weight.detach().float().cpu(), self.linear.bias.detach().float().cpu()
        if not bool(torch.isfinite(weight_cd).all()) or not bool(torch.isfinite(bias_c).all()):
            raise HeadError("training diverged: the probe's weights are not finite (try a lower --lr)")
        save_head(directory, LinearHead(weight_cd, bias_c, self.layer, self.pooling, self.class_names,  # type: ignore[arg-type]
                                        model, {"kind": self.kind, **info}))
