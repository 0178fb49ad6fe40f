"""Fine-tuning methods, one module each, registered by name (:mod:`traitlens.finetune.methods.base`)."""

from traitlens.finetune.methods.base import FinetuneMethod, finetune_method, finetune_methods, register_method

__all__ = ["FinetuneMethod", "finetune_method", "finetune_methods", "register_method"]
