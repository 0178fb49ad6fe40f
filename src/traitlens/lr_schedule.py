"""The learning-rate schedule of the loops that train classifiers and heads."""

from __future__ import annotations

import math


def warmup_cosine(lr: float, step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` (at least one), then cosine decay to zero at ``total_steps``."""
    warmup = max(1, warmup_steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
