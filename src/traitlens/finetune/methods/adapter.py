"""``adapter``: a residual bottleneck after every block (down-projection, GELU, up-projection,
added to the block's output; Houlsby et al. 2019's adapter, placed once per block).

It goes in through the layer abstraction (a forward hook on each block that reads and writes
``tokens_btd`` with the layer's codec), so it fits any backbone of ours, CNN stages included (there
it is a 1x1 bottleneck on the feature map). The up-projection starts at zero: before training the
adapted model computes exactly what the model did. No maintained library offers this adapter for
arbitrary torch modules (peft's adapters are other methods), hence this small module.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.backbones import Backbone, Layer
from traitlens.finetune.methods.base import FinetuneMethod, register_method

MODULE = "traitlens_adapters"


class _Bottleneck(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, tokens_btd: torch.Tensor) -> torch.Tensor:
        return tokens_btd + self.up(F.gelu(self.down(tokens_btd)))


def _hook(layer: Layer, adapter: _Bottleneck) -> Any:
    def after_block(_module: nn.Module, _args: Any, output: Any) -> Any:
        return layer.codec.from_tokens(adapter(layer.codec.to_tokens(output)), like=output)

    return after_block


@register_method
class Adapter(FinetuneMethod):
    name = "adapter"
    summary = "adapters: a residual bottleneck of --adapter-width units after every block (any backbone)"
    defaults: ClassVar[dict[str, int]] = {"adapter_width": 8}

    def prepare(self, backbone: Backbone) -> None:
        layers = [backbone.layer(name) for name in backbone.layer_names]
        adapters = nn.ModuleList(_Bottleneck(layer.width, self.settings["adapter_width"]) for layer in layers)
        backbone.model.add_module(MODULE, adapters)
        for layer, adapter in zip(layers, adapters, strict=True):
            # registered now, before any capture or edit: those see the adapted tokens
            layer.module.register_forward_hook(_hook(layer, adapter))  # type: ignore[arg-type]

    def trains(self, name: str) -> bool:
        return name.startswith(f"{MODULE}.")
