"""The one train/validation split of the package (model training and linear probes share it)."""

from __future__ import annotations

import torch


def train_val_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of the training and validation items of ``n``: a ``val_fraction`` share
    (at least one item when the share is above 0) drawn by ``seed``, the same on every machine."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return order[n_val:].sort().values, order[:n_val].sort().values
