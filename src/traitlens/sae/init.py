"""Data-dependent initialization: normalization from store statistics, decoder bias, decoder rows."""

from __future__ import annotations

import math
from typing import Literal

import torch

from traitlens.sae.model import SparseAutoencoder
from traitlens.store.stats import LayerStats

BiasInit = Literal["geometric_median", "mean", "zero"]


def geometric_median(points_nd: torch.Tensor, iterations: int = 100, tolerance: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm in float64: the point minimizing the sum of distances."""
    points = points_nd.to(torch.float64)
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-12)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= tolerance * median.norm().clamp_min(1.0):
            median = updated
            break
        median = updated
    return median.to(points_nd.dtype)


@torch.no_grad()
def set_normalization(sae: SparseAutoencoder, stats: LayerStats) -> None:
    """Fill ``input_mean``/``input_scale`` from the store's statistics for the config's mode."""
    mode = sae.config.normalization
    if mode == "norm":
        sae.input_scale.fill_(math.sqrt(sae.config.d_in) / max(stats.mean_norm, 1e-12))
    elif mode == "standardize":
        sae.input_mean.copy_(torch.from_numpy(stats.mean_d))
        sae.input_scale.copy_(1.0 / torch.from_numpy(stats.std_d).clamp_min(1e-6))


@torch.no_grad()
def initialize_from_data(sae: SparseAutoencoder, sample_nd: torch.Tensor, bias: BiasInit, data_points: bool,
                         generator: torch.Generator) -> None:
    """Decoder bias from the (normalized) sample; optionally decoder rows from sample points."""
    normalized_nd = sae.normalize(sample_nd)
    if bias == "geometric_median":
        sae.b_dec.copy_(geometric_median(normalized_nd))
    elif bias == "mean":
        sae.b_dec.copy_(normalized_nd.mean(0))
    if data_points:
        picks = torch.randint(len(normalized_nd), (sae.config.width,), generator=generator)
        rows_wd = normalized_nd[picks] - sae.b_dec
        rows_wd += 1e-3 * torch.randn(rows_wd.shape, generator=generator)  # duplicates must not stay identical
        sae.W_dec.copy_(rows_wd / rows_wd.norm(dim=1, keepdim=True).clamp_min(1e-12))
        sae.W_enc.copy_(sae.W_dec)
