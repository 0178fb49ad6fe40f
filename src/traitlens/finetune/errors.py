"""The one error kind of the finetune package."""

from traitlens.errors import TraitlensError


class FinetuneError(TraitlensError):
    """A model cannot be fine-tuned, calibrated or loaded as asked."""
