"""Multinomial logistic regression, fitted deterministically by full-batch L-BFGS.

Features are standardized with float64 statistics for a well-conditioned fit, and the
standardization is folded back into the returned weights, so they apply to raw features. The
start is all zeros and nothing draws random numbers: the same data give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

# A feature whose spread is below this is constant: it is centred but not scaled, so it stays 0.
_MIN_STD = 1e-8


@dataclass(frozen=True)
class LogisticFit:
    weight_cd: torch.Tensor  # float32, applies to raw (unstandardized) features
    bias_c: torch.Tensor
    loss: float  # final mean cross-entropy plus the L2 penalty, on standardized features
    iterations: int


def fit_logistic_regression(features_nd: torch.Tensor, labels_n: torch.Tensor, n_classes: int, l2: float,
                            max_iter: int) -> LogisticFit:
    """Minimize mean cross-entropy + ``l2``/2 * ||W||² over (n, d) features and (n,) int labels in
    ``[0, n_classes)``; returns weights (n_classes, d) and bias (n_classes,) for raw features."""
    x64_nd = features_nd.double()
    mean_d = x64_nd.mean(0)
    std_d = x64_nd.std(0, unbiased=False)
    std_d = torch.where(std_d < _MIN_STD, torch.ones_like(std_d), std_d)
    z_nd = ((x64_nd - mean_d) / std_d).float()
    weight_cd = torch.zeros(n_classes, z_nd.shape[1], requires_grad=True)
    bias_c = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight_cd, bias_c], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        return F.cross_entropy(z_nd @ weight_cd.T + bias_c, labels_n) + 0.5 * l2 * weight_cd.square().sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        loss = float(objective())
        # z = (x - mean) / std, so W z + b = (W / std) x + (b - (W / std) mean)
        raw_weight_cd = weight_cd.double() / std_d
        raw_bias_c = bias_c.double() - raw_weight_cd @ mean_d
    return LogisticFit(raw_weight_cd.float(), raw_bias_c.float(), loss, int(optimizer.state[weight_cd]["n_iter"]))
