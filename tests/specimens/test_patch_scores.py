"""Patch-level localization metrics on hand-made maps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from traitlens.specimens.benchmark import ScoringError
from traitlens.specimens.patch_scores import (
    patch_average_precision,
    patch_mass_inside,
    patch_pointing_hits,
    pointing_chance,
    pool_to_grid,
    rank_correlation,
    score_patch_maps,
)


def _trait(*cells: tuple[int, int], grid: int = 4) -> torch.Tensor:
    positives = torch.zeros(1, grid, grid, dtype=torch.bool)
    for row, col in cells:
        positives[0, row, col] = True
    return positives


def test_a_map_equal_to_the_trait_scores_perfectly() -> None:
    positives = _trait((1, 1), (1, 2))
    scores = score_patch_maps(positives.to(torch.float64), positives, oracle_ngg=positives.to(torch.float64))
    assert (scores.mass_inside, scores.patch_ap, scores.pointing_game, scores.rank_correlation) == (1.0, 1.0, 1.0, 1.0)
    assert scores.chance_mass == scores.chance_ap == pytest.approx(2 / 16)
    # grown by one patch the two cells cover a 3x4 block
    assert scores.chance_pointing == pytest.approx(12 / 16)


def test_a_flat_map_scores_chance() -> None:
    positives = _trait((3, 3))
    flat = torch.ones(1, 4, 4, dtype=torch.float64)
    assert float(patch_mass_inside(flat, positives)[0]) == pytest.approx(1 / 16)
    assert float(patch_average_precision(flat, positives)[0]) == pytest.approx(1 / 16)


def test_pointing_tolerance_is_one_patch_chebyshev() -> None:
    positives = _trait((2, 2))
    diagonal = torch.zeros(1, 4, 4, dtype=torch.float64)
    diagonal[0, 1, 1] = 1.0
    two_away = torch.zeros(1, 4, 4, dtype=torch.float64)
    two_away[0, 0, 0] = 1.0
    assert not bool(patch_pointing_hits(diagonal, positives, tolerance=0)[0])
    assert bool(patch_pointing_hits(diagonal, positives, tolerance=1)[0])
    assert not bool(patch_pointing_hits(two_away, positives, tolerance=1)[0])
    assert not bool(patch_pointing_hits(torch.zeros(1, 4, 4), positives)[0])  # a blank map points nowhere
    assert float(pointing_chance(positives, tolerance=1)[0]) == pytest.approx(9 / 16)


def test_patch_ap_matches_scikit_learn_with_ties() -> None:
    generator = np.random.default_rng(0)
    maps = torch.from_numpy(generator.integers(0, 4, (6, 5, 5)).astype(np.float64))  # many ties
    positives = torch.from_numpy(generator.random((6, 5, 5)) < 0.3)
    positives[:, 0, 0] = True
    ours = patch_average_precision(maps, positives)
    for row in range(6):
        expected = average_precision_score(positives[row].flatten().numpy(), maps[row].flatten().numpy())
        assert float(ours[row]) == pytest.approx(expected)


def test_rank_correlation_matches_scipy_and_is_nan_for_a_constant_map() -> None:
    generator = np.random.default_rng(1)
    maps = torch.from_numpy(generator.integers(0, 5, (4, 3, 3)).astype(np.float64))
    oracle = torch.from_numpy(generator.normal(size=(4, 3, 3)))
    ours = rank_correlation(maps, oracle)
    for row in range(4):
        assert float(ours[row]) == pytest.approx(spearmanr(maps[row].flatten(), oracle[row].flatten()).statistic)
    assert torch.isnan(rank_correlation(torch.ones(1, 3, 3), oracle[:1]))[0]


def test_negative_values_are_not_mass_and_pooling_averages_cells() -> None:
    positives = _trait((0, 0), grid=2)
    signed = torch.tensor([[[2.0, -5.0], [0.0, 2.0]]], dtype=torch.float64)
    assert float(patch_mass_inside(signed, positives)[0]) == pytest.approx(0.5)
    pixels = torch.zeros(1, 4, 4)
    pixels[0, :2, :2] = 1.0
    pixels[0, 0, 0] = 4.0
    assert pool_to_grid(pixels, (2, 2))[0].tolist() == [[1.75, 0.0], [0.0, 0.0]]


def test_bad_shapes_and_traitless_sets_are_one_line_errors() -> None:
    with pytest.raises(ScoringError, match="same"):
        rank_correlation(torch.ones(1, 2, 2), torch.ones(1, 3, 3))
    with pytest.raises(ScoringError, match="boolean"):
        patch_mass_inside(torch.ones(1, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(ScoringError, match="no image"):
        score_patch_maps(torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
