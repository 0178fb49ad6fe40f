from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.store.stats import StatsAccumulator


def _reference(acts_nd: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    kept = acts_nd[np.isfinite(acts_nd).all(1)].astype(np.float64)
    return kept.mean(0), kept.std(0), float(np.linalg.norm(kept, axis=1).mean())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_block_sums_match_float64_numpy_across_blocks(dtype: torch.dtype) -> None:
    acts_nd = (torch.randn(1000, 24, generator=torch.Generator().manual_seed(0)) * 40 + 7).to(dtype)
    accumulator = StatsAccumulator.empty(24)
    for block in acts_nd.split(300):
        accumulator.add(block)
    stats = accumulator.finish()
    mean_d, std_d, mean_norm = _reference(acts_nd.float().numpy())
    np.testing.assert_allclose(stats.mean_d, mean_d, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std_d, std_d, rtol=1e-6)
    assert stats.mean_norm == pytest.approx(mean_norm, rel=1e-6)
    assert (stats.count, stats.n_nonfinite) == (1000, 0)


def test_non_finite_rows_are_left_out_and_huge_float32_values_kept() -> None:
    acts_nd = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    acts_nd[3, 1], acts_nd[9, 0], acts_nd[20, 2] = float("nan"), float("inf"), 1e25  # 1e25 is finite, its square is not
    accumulator = StatsAccumulator.empty(4)
    accumulator.add(acts_nd)
    stats = accumulator.finish()
    mean_d, std_d, mean_norm = _reference(acts_nd.numpy())
    assert (stats.count, stats.n_nonfinite) == (48, 2)
    np.testing.assert_allclose(stats.mean_d, mean_d, rtol=1e-12)
    np.testing.assert_allclose(stats.std_d, std_d, rtol=1e-9)
    assert stats.mean_norm == pytest.approx(mean_norm, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_large_mean_keeps_a_small_spread(dtype: torch.dtype) -> None:
    """ViTs have dimensions of a large mean and a small spread; their std must not cancel away."""
    generator = torch.Generator().manual_seed(2)
    acts_nd = torch.randn(20_000, 3, generator=generator) * torch.tensor([0.05, 0.01, 1.0]) + torch.tensor([50.0, 1000.0, 0.0])
    acts_nd = acts_nd.to(dtype)
    accumulator = StatsAccumulator.empty(3)
    for block in acts_nd.split(4096):
        accumulator.add(block)
    stats = accumulator.finish()
    mean_d, std_d, _ = _reference(acts_nd.float().numpy())
    np.testing.assert_allclose(stats.std_d, std_d, rtol=1e-3)
    np.testing.assert_allclose(stats.mean_d, mean_d, rtol=1e-7, atol=1e-6)
