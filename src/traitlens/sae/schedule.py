"""Learning-rate and sparsity-coefficient schedules: pure functions of the step, so a resumed run
needs no scheduler state."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, final_fraction: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * final_fraction`` at the end."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (final_fraction + (1.0 - final_fraction) * cosine)


def sparsity_coefficient(step: int, target: float, warmup_steps: int) -> float:
    """Linear ramp from 0 to ``target`` over ``warmup_steps`` (L1 / L0 penalties start gently)."""
    if warmup_steps <= 0:
        return target
    return target * min((step + 1) / warmup_steps, 1.0)
