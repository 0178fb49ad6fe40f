"""User-facing errors.

Every error a user can cause is a :class:`TraitlensError`; the CLI catches the base class once and
prints its message as one line. Subclasses exist so library callers can tell causes apart.
"""


class TraitlensError(Exception):
    """Base class for errors caused by user input or environment, shown as one line."""


class SpecError(TraitlensError):
    """A model spec string cannot be parsed or names an unknown provider or model."""


class WeightsUnavailableError(TraitlensError):
    """Pretrained weights could not be obtained (no hub access, bad file, mismatched keys)."""


class LayerError(TraitlensError):
    """A requested layer does not exist or cannot be used as asked."""


class DataError(TraitlensError):
    """An image source is missing, empty, malformed, or holds unreadable images under --strict."""


class StoreError(TraitlensError):
    """An activation store is missing, damaged, or does not match the job resuming into it."""


def first_line(error: BaseException) -> str:
    """An exception's message as one short line (safetensors, torch and numpy write several)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]
