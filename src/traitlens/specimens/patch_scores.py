"""Localization scored at the model's own resolution: maps and masks as patch grids.

A map made at patch resolution (every CAM of a ViT) cannot put its mass on a trait that covers a
few pixels of a patch; scored per pixel it looks worse than it is. These metrics compare a map and
the trait on the model's patch grid instead, each with its chance level:

- **mass inside** — the map's mass on the trait's patches (chance: the trait patches' share);
- **patch AP** — average precision of the map's patch values against the trait patches, per
  image, then averaged (chance: the trait patches' share);
- **pointing game with tolerance** — the map's top patch lies within ``tolerance`` patches
  (Chebyshev distance, 1 = the eight neighbours) of a trait patch (chance: the share of patches
  that would hit);
- **rank correlation with the oracle** — Spearman correlation, over an image's patches, between
  the map and the oracle map (what each patch really does to the model's score; chance 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from traitlens.features.patch_positives import DEFAULT_MIN_COVERAGE, patch_coverage, patch_positives
from traitlens.specimens.benchmark import ScoringError
from traitlens.specimens.oracle import cell_bounds

PatchMaps = torch.Tensor
"""(n, gh, gw) float64 scores per patch; higher means more evidence."""


def pool_to_grid(maps_nhw: torch.Tensor | np.ndarray, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel maps (n, H, W) averaged over each cell of a ``grid_hw`` grid: (n, gh, gw) float64.
    The cells are the oracle maps' (:func:`traitlens.specimens.oracle.cell_bounds`), so a map
    whose size the grid does not divide is pooled as the oracle saw it."""
    maps = torch.as_tensor(maps_nhw).to(torch.float64)
    if maps.ndim != 3:
        raise ScoringError(f"maps must be (n, H, W), got {tuple(maps.shape)}")
    rows, cols = cell_bounds(maps.shape[1], grid_hw[0]), cell_bounds(maps.shape[2], grid_hw[1])
    return torch.stack([torch.stack([maps[:, r0:r1, c0:c1].mean((1, 2)) for c0, c1 in cols], -1) for r0, r1 in rows], -2)


def trait_patches(mask_hw: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(gh, gw) bool: the patches that show the mask, by the one rule of trait patches
    (:mod:`traitlens.features.patch_positives`)."""
    coverage_pl = patch_coverage(mask_hw.astype(np.int64), grid_hw, 2)
    return patch_positives(coverage_pl, [1], DEFAULT_MIN_COVERAGE)[:, 0].reshape(grid_hw)


def _check(maps_ngg: torch.Tensor, positives_ngg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.as_tensor(maps_ngg).to(torch.float64)
    positives = torch.as_tensor(positives_ngg, device=maps.device)
    if maps.ndim != 3 or maps.shape != positives.shape:
        raise ScoringError(f"patch maps and trait patches must both be (n, gh, gw), got {tuple(maps.shape)} "
                           f"and {tuple(positives.shape)}")
    if positives.dtype != torch.bool:
        raise ScoringError(f"trait patches must be boolean, got {positives.dtype}")
    if not bool(torch.isfinite(maps).all()):
        raise ScoringError("patch maps must be finite")
    return maps, positives


def patch_mass_inside(maps_ngg: torch.Tensor, positives_ngg: torch.Tensor) -> torch.Tensor:
    """Per image (n,): the share of the map's positive mass on trait patches (negative values,
    as in an oracle or a signed map, count as no mass); 0 for a map without positive mass."""
    maps, positives = _check(maps_ngg, positives_ngg)
    mass = maps.clamp_min(0).flatten(1)
    total = mass.sum(1)
    inside = (mass * positives.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def patch_average_precision(maps_ngg: torch.Tensor, positives_ngg: torch.Tensor) -> torch.Tensor:
    """Per image (n,): average precision of the patch values against the trait patches, ties
    entering together (scikit-learn's definition); NaN for an image without trait patches."""
    maps, positives = _check(maps_ngg, positives_ngg)
    scores, labels = maps.flatten(1), positives.flatten(1)
    ap = torch.full((len(scores),), float("nan"), dtype=torch.float64)
    for row, (score, label) in enumerate(zip(scores, labels, strict=True)):
        n_positive = int(label.sum())
        if n_positive == 0:
            continue
        # precision at each positive's threshold: positives and patches scoring at least as high
        at_least = score[None, :] >= score[label][:, None]
        precision = (at_least & label[None, :]).sum(1) / at_least.sum(1)
        ap[row] = precision.to(torch.float64).mean()
    return ap


def _grow(positives_ngg: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Trait patches grown by ``tolerance`` patches in every direction (Chebyshev distance)."""
    if tolerance == 0:
        return positives_ngg
    size = 2 * tolerance + 1
    grown = torch.nn.functional.max_pool2d(positives_ngg[:, None].to(torch.float32), size, stride=1, padding=tolerance)
    return grown[:, 0] > 0


def patch_pointing_hits(maps_ngg: torch.Tensor, positives_ngg: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """Per image (n,) bool: the map's top patch (first in row-major order on ties) lies within
    ``tolerance`` patches of a trait patch. A map without a positive value points nowhere."""
    if tolerance < 0:
        raise ScoringError(f"tolerance must be at least 0 patches, got {tolerance}")
    maps, positives = _check(maps_ngg, positives_ngg)
    top = maps.flatten(1).argmax(1)
    hit = _grow(positives, tolerance).flatten(1).gather(1, top[:, None])[:, 0]
    return hit & (maps.flatten(1).amax(1) > 0)


def pointing_chance(positives_ngg: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """Per image (n,): the hit rate of a top patch drawn uniformly at random."""
    positives = torch.as_tensor(positives_ngg)
    return _grow(positives, tolerance).flatten(1).to(torch.float64).mean(1)


def _ranks(values_np: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last axis (ties share the mean of their ranks)."""
    order = values_np.argsort(-1)
    ranks = torch.empty_like(values_np)
    ranks.scatter_(-1, order, torch.arange(values_np.shape[-1], dtype=values_np.dtype).expand_as(values_np).clone())
    # average tied ranks: equal values get the mean rank of their group
    for row in range(len(values_np)):
        _, inverse, counts = torch.unique(values_np[row], return_inverse=True, return_counts=True)
        if bool((counts > 1).any()):
            sums = torch.zeros(len(counts), dtype=values_np.dtype).index_add_(0, inverse, ranks[row])
            ranks[row] = (sums / counts)[inverse]
    return ranks


def rank_correlation(maps_ngg: torch.Tensor, oracle_ngg: torch.Tensor) -> torch.Tensor:
    """Per image (n,): Spearman correlation between a map's and the oracle's patch values;
    NaN where either is constant (no ranking to agree with)."""
    maps = torch.as_tensor(maps_ngg).to(torch.float64).flatten(1)
    oracle = torch.as_tensor(oracle_ngg).to(torch.float64).flatten(1)
    if maps.shape != oracle.shape or maps.ndim != 2:
        raise ScoringError(f"maps and oracle maps must have the same (n, gh, gw) shape, got {tuple(maps_ngg.shape)} "
                           f"and {tuple(oracle_ngg.shape)}")
    a, b = _ranks(maps), _ranks(oracle)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-300), float("nan"))


@dataclass(frozen=True)
class PatchLocalization:
    """Means over the images that have trait patches (and, for the rank correlation, an oracle)."""

    n_images: int
    mass_inside: float
    patch_ap: float
    pointing_game: float
    rank_correlation: float | None
    chance_mass: float
    chance_ap: float
    chance_pointing: float


def _mean(values: torch.Tensor) -> float | None:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if len(finite) else None


def score_patch_maps(maps_ngg: torch.Tensor, positives_ngg: torch.Tensor, oracle_ngg: torch.Tensor | None = None,
                     tolerance: int = 1) -> PatchLocalization:
    """Every patch-level metric of a set of maps, with chance levels, over images with trait patches."""
    maps, positives = _check(maps_ngg, positives_ngg)
    keep = positives.flatten(1).any(1)
    if not bool(keep.any()):
        raise ScoringError("no image has a trait patch to score against")
    maps, positives = maps[keep], positives[keep]
    share = positives.flatten(1).to(torch.float64).mean(1)
    correlation = None if oracle_ngg is None else _mean(rank_correlation(maps, torch.as_tensor(oracle_ngg)[keep]))
    return PatchLocalization(
        n_images=int(keep.sum()),
        mass_inside=float(patch_mass_inside(maps, positives).mean()),
        patch_ap=float(patch_average_precision(maps, positives).mean()),
        pointing_game=float(patch_pointing_hits(maps, positives, tolerance).to(torch.float64).mean()),
        rank_correlation=correlation,
        chance_mass=float(share.mean()),
        chance_ap=float(share.mean()),
        chance_pointing=float(pointing_chance(positives, tolerance).mean()),
    )
