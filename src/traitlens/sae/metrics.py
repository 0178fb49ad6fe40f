"""Reconstruction and sparsity metrics, shared by training logs and evaluation."""

from __future__ import annotations

import torch

DENSE_FREQUENCY = 0.1  # a latent firing on more than this share of tokens counts as dense


def nmse(x_nd: torch.Tensor, recon_nd: torch.Tensor, mean_d: torch.Tensor) -> float:
    """Squared error over squared distance to the dataset-mean vector (float64)."""
    error = (recon_nd.double() - x_nd.double()).square().sum()
    spread = (x_nd.double() - mean_d.double()).square().sum()
    return float(error / spread.clamp_min(1e-30))


def explained_variance(x_nd: torch.Tensor, recon_nd: torch.Tensor) -> float:
    """1 - total variance of the residual / total variance of the input, over the batch."""
    residual = (x_nd.double() - recon_nd.double()).var(dim=0, unbiased=False).sum()
    total = x_nd.double().var(dim=0, unbiased=False).sum()
    return float(1.0 - residual / total.clamp_min(1e-30))
