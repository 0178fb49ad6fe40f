"""Per-dimension statistics of a layer's tokens, accumulated in float64 and mergeable across shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from traitlens.store.checked import Fields


@dataclass
class StatsAccumulator:
    """Running float64 sums over the tokens of one layer; ``merge`` combines shards in any order."""

    sum_d: np.ndarray
    sumsq_d: np.ndarray
    count: int = 0
    sum_norm: float = 0.0
    n_nonfinite: int = 0

    @classmethod
    def empty(cls, width: int) -> StatsAccumulator:
        return cls(sum_d=np.zeros(width), sumsq_d=np.zeros(width))

    def add(self, acts_nd: torch.Tensor) -> None:
        """Accumulate a (tokens, width) block; rows with NaN/Inf are counted and left out."""
        acts64_nd = acts_nd.to(torch.float64)
        finite_n = torch.isfinite(acts64_nd).all(dim=1)
        n_finite = int(finite_n.sum())
        self.n_nonfinite += len(finite_n) - n_finite
        if n_finite < len(finite_n):  # the masked copy costs as much as the sums: only when needed
            acts64_nd = acts64_nd[finite_n]
        self.count += int(acts64_nd.shape[0])
        self.sum_d += acts64_nd.sum(0).cpu().numpy()
        self.sumsq_d += acts64_nd.square().sum(0).cpu().numpy()
        self.sum_norm += float(acts64_nd.norm(dim=1).sum())

    def merge(self, other: StatsAccumulator) -> None:
        self.count += other.count
        self.sum_d += other.sum_d
        self.sumsq_d += other.sumsq_d
        self.sum_norm += other.sum_norm
        self.n_nonfinite += other.n_nonfinite

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sum_d": self.sum_d.tolist(), "sumsq_d": self.sumsq_d.tolist(),
                "sum_norm": self.sum_norm, "n_nonfinite": self.n_nonfinite}

    @classmethod
    def from_fields(cls, fields: Fields, width: int) -> StatsAccumulator:
        return cls(sum_d=fields.numbers("sum_d", width), sumsq_d=fields.numbers("sumsq_d", width, minimum=0.0),
                   count=fields.integer("count"), sum_norm=fields.number("sum_norm", minimum=0.0),
                   n_nonfinite=fields.integer("n_nonfinite"))

    def finish(self) -> LayerStats:
        count = max(self.count, 1)
        mean_d = self.sum_d / count
        var_d = np.maximum(self.sumsq_d / count - mean_d**2, 0.0)
        return LayerStats(count=self.count, mean_d=mean_d, std_d=np.sqrt(var_d),
                          mean_norm=self.sum_norm / count, n_nonfinite=self.n_nonfinite)


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one stored layer: per-dimension mean and std, and the mean token L2 norm."""

    count: int
    mean_d: np.ndarray
    std_d: np.ndarray
    mean_norm: float
    n_nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean_d": self.mean_d.tolist(), "std_d": self.std_d.tolist(),
                "mean_norm": self.mean_norm, "n_nonfinite": self.n_nonfinite}

    @classmethod
    def from_fields(cls, fields: Fields, width: int) -> LayerStats:
        """Statistics of a ``width``-dim layer, every value checked finite (std and norm not negative)."""
        return cls(count=fields.integer("count"), mean_d=fields.numbers("mean_d", width),
                   std_d=fields.numbers("std_d", width, minimum=0.0), mean_norm=fields.number("mean_norm", minimum=0.0),
                   n_nonfinite=fields.integer("n_nonfinite"))
