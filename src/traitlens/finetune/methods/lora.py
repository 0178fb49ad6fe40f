"""``lora``: low-rank updates of the blocks' linear and convolution layers (Hu et al. 2022), from
peft (``inject_adapter_in_model``): rank ``--lora-rank``, scale ``--lora-alpha`` / rank, no
dropout (training stays deterministic). The targets are every ``nn.Linear`` and ungrouped
``nn.Conv2d`` inside the backbone's layers, found through the layer abstraction; the classifier
is trained whole, as with every method.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from traitlens.backbones import Backbone
from traitlens.errors import first_line
from traitlens.finetune.errors import FinetuneError
from traitlens.finetune.methods.base import FinetuneMethod, register_method


def lora_targets(backbone: Backbone) -> list[str]:
    """The full names of the linear and convolution layers inside the backbone's layers."""
    names = {id(module): name for name, module in backbone.model.named_modules()}
    targets = []
    for layer_name in backbone.layer_names:
        block = backbone.layer(layer_name).module
        prefix = names[id(block)]
        for inner, module in block.named_modules():
            if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
                targets.append(f"{prefix}.{inner}" if inner else prefix)
    return sorted(set(targets))


@register_method
class LoRA(FinetuneMethod):
    name = "lora"
    summary = "LoRA (peft): rank --lora-rank updates of the blocks' linear and convolution layers"
    defaults: ClassVar[dict[str, int]] = {"lora_rank": 8, "lora_alpha": 8}

    def prepare(self, backbone: Backbone) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = lora_targets(backbone)
        if not targets:
            raise FinetuneError(f"lora finds no linear or convolution layer in the blocks of {backbone.spec}")
        config = LoraConfig(r=self.settings["lora_rank"], lora_alpha=self.settings["lora_alpha"], lora_dropout=0.0,
                            target_modules=targets, bias="none")
        try:
            inject_adapter_in_model(config, backbone.model)
        except (ValueError, TypeError, RuntimeError) as error:
            raise FinetuneError(f"lora cannot apply to {backbone.spec}: {first_line(error)}") from error

    def trains(self, name: str) -> bool:
        return "lora_" in name
