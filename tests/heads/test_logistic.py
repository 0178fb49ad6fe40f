"""Logistic regression against scikit-learn's solution of the same objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from traitlens.heads.logistic import fit_logistic_regression


def _blobs(n_per_class: int = 60, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping Gaussian classes on features of very different scales and offsets."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (3, d))
    x = np.concatenate([centre + rng.normal(0, 1.0, (n_per_class, d)) for centre in centres])
    x = x * np.geomspace(0.01, 100, d) + np.linspace(-50, 50, d)
    return x.astype(np.float32), np.repeat(np.arange(3), n_per_class)


def test_matches_scikit_learn_on_standardized_features() -> None:
    x, y = _blobs()
    l2 = 0.01
    fit = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), 3, l2=l2, max_iter=500)

    # sklearn minimizes C * sum(CE) + ||W||²/2 = n * C * (mean CE + ||W||² / (2 n C)): the same minimum for C = 1 / (n * l2)
    scaler = StandardScaler().fit(x.astype(np.float64))
    reference = LogisticRegression(C=1 / (len(x) * l2), tol=1e-10, max_iter=10_000).fit(scaler.transform(x), y)
    ours_nc = torch.softmax(torch.from_numpy(x) @ fit.weight_cd.T + fit.bias_c, -1).numpy()  # raw features: folded weights
    # float32 L-BFGS stops within ~1e-8 of the minimum; along its flattest directions that leaves
    # probabilities a few 1e-4 apart, so the objective is the sharp test and the probabilities the coarse one
    z_nd, y_n = torch.from_numpy(scaler.transform(x.astype(np.float64))), torch.from_numpy(y)

    def objective(weight_cd: torch.Tensor, bias_c: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(z_nd @ weight_cd.T + bias_c, y_n) + 0.5 * l2 * weight_cd.square().sum())

    std_d, mean_d = torch.from_numpy(scaler.scale_), torch.from_numpy(scaler.mean_)
    ours = objective(fit.weight_cd.double() * std_d, fit.bias_c.double() + fit.weight_cd.double() @ mean_d)
    best = objective(torch.from_numpy(reference.coef_).double(), torch.from_numpy(reference.intercept_).double())
    assert ours == pytest.approx(best, abs=1e-7)
    np.testing.assert_allclose(ours_nc, reference.predict_proba(scaler.transform(x)), atol=1e-3)
    assert 0 < fit.iterations <= 500 and np.isfinite(fit.loss)


def test_is_deterministic_and_survives_constant_features() -> None:
    x, y = _blobs(seed=1)
    x[:, 2] = 7.0  # no spread: must not divide by zero
    first = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), 3, l2=1e-3, max_iter=200)
    second = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), 3, l2=1e-3, max_iter=200)
    assert torch.equal(first.weight_cd, second.weight_cd) and torch.equal(first.bias_c, second.bias_c)
    assert torch.isfinite(first.weight_cd).all() and not first.weight_cd[:, 2].any()
