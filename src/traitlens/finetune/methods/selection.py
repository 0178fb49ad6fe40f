"""Methods that train weights the model already has: ``linear`` (the classifier alone: linear
probing), ``full`` (every weight) and ``bitfit`` (every bias, Ben Zaken et al. 2022)."""

from __future__ import annotations

from traitlens.finetune.methods.base import FinetuneMethod, register_method


@register_method
class Linear(FinetuneMethod):
    name = "linear"
    summary = "linear probing: the classifier alone"

    def trains(self, name: str) -> bool:
        return False


@register_method
class Full(FinetuneMethod):
    name = "full"
    summary = "full fine-tuning: every weight of the model"

    def trains(self, name: str) -> bool:
        return True


@register_method
class BitFit(FinetuneMethod):
    name = "bitfit"
    summary = "BitFit: every bias of the model"

    def trains(self, name: str) -> bool:
        return name.rsplit(".", 1)[-1] == "bias"
