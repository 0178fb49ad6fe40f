"""Patch-resolution label scores to pixel labels: bilinear upsampling onto the image, then, by
default, a guided filter (He, Sun and Tang, 2013) with the image's colours as the guide, so label
edges snap to colour edges. It is a local linear model per window: linear in the pixels, a few box
filters, no iterations, so it costs about as much as the upsampling itself (a dense CRF would cost
an order of magnitude more and needs a compiled extension)."""

from __future__ import annotations

from typing import Literal, get_args

import torch

Refinement = Literal["guided", "bilinear"]
REFINEMENTS: tuple[str, ...] = get_args(Refinement)


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over a window of 2r+1 along ``dim``, cut at the borders: a difference of cumulative sums,
    so the cost does not grow with the radius."""
    size = x.shape[dim]
    padded = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x.cumsum(dim)], dim)
    index = torch.arange(size, device=x.device)
    upper = (index + radius + 1).clamp(max=size)
    lower = (index - radius).clamp(min=0)
    return padded.index_select(dim, upper) - padded.index_select(dim, lower)


def _box_mean(x_nchw: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over each (2r+1)^2 window, windows cut at the image border (not padded with zeros)."""
    height, width = x_nchw.shape[-2:]
    sums = _box_sum_1d(_box_sum_1d(x_nchw.to(torch.float64), radius, -2), radius, -1)
    counts_h = _box_sum_1d(torch.ones(height, dtype=torch.float64, device=x_nchw.device), radius, 0)
    counts_w = _box_sum_1d(torch.ones(width, dtype=torch.float64, device=x_nchw.device), radius, 0)
    return (sums / (counts_h[:, None] * counts_w[None, :])).to(x_nchw.dtype)


def guided_filter(guide_3hw: torch.Tensor, scores_chw: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s colour guided filter: ``scores_chw`` (any channels) filtered so that, in every
    window, they are a linear function of the guide's RGB (3, h, w) in [0, 1]; ``eps`` is the
    regularization (larger: smoother, edges followed less)."""
    guide = guide_3hw.to(torch.float32)
    height, width = guide.shape[-2:]
    mean_i_3hw = _box_mean(guide[None], radius)[0]
    mean_p_chw = _box_mean(scores_chw[None], radius)[0]
    products_i_p = _box_mean((guide[:, None] * scores_chw[None]).reshape(1, -1, height, width), radius)
    cov_ip_3chw = products_i_p.reshape(3, -1, height, width) - mean_i_3hw[:, None] * mean_p_chw[None]
    products_i_i = _box_mean((guide[:, None] * guide[None]).reshape(1, 9, height, width), radius)
    var_i_33hw = products_i_i.reshape(3, 3, height, width) - mean_i_3hw[:, None] * mean_i_3hw[None]
    var_i_hw33 = var_i_33hw.permute(2, 3, 0, 1) + eps * torch.eye(3)
    # a = (Sigma + eps I)^-1 cov(I, p), per pixel, for every score channel at once
    a_hw3c = torch.linalg.solve(var_i_hw33, cov_ip_3chw.permute(2, 3, 0, 1))
    a_3chw = a_hw3c.permute(2, 3, 0, 1)
    b_chw = mean_p_chw - (a_3chw * mean_i_3hw[:, None]).sum(0)
    mean_a_3chw = _box_mean(a_3chw.reshape(1, -1, height, width), radius).reshape(3, -1, height, width)
    mean_b_chw = _box_mean(b_chw[None], radius)[0]
    return (mean_a_3chw * guide[:, None]).sum(0) + mean_b_chw


def pixel_scores(scores_chw: torch.Tensor, rgb_3hw: torch.Tensor | None, radius: int, eps: float) -> torch.Tensor:
    """Label scores at the image's resolution (already upsampled) refined by the image when
    ``rgb_3hw`` is given, then made a distribution again (the filter can leave [0, 1])."""
    refined = scores_chw if rgb_3hw is None else guided_filter(rgb_3hw, scores_chw, radius, eps)
    refined = refined.clamp_min(0)
    return refined / refined.sum(0, keepdim=True).clamp_min(1e-6)
