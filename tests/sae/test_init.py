from __future__ import annotations

import itertools

import torch

from traitlens.sae.init import geometric_median
from traitlens.sae.schedule import learning_rate, sparsity_coefficient


def test_geometric_median_resists_outliers() -> None:
    points = torch.cat([torch.zeros(20, 3), torch.full((3, 3), 1000.0)])
    assert geometric_median(points).abs().max() < 1e-3 < points.mean(0).abs().max()
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(geometric_median(square), torch.tensor([1.0, 1.0]))


def test_schedules() -> None:
    rates = [learning_rate(step, 100, 1.0, 10, 0.1) for step in range(100)]
    assert rates[0] == 0.1 and rates[9] == 1.0 and abs(rates[-1] - 0.1) < 0.01
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert [sparsity_coefficient(s, 2.0, 4) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert sparsity_coefficient(0, 2.0, 0) == 2.0
