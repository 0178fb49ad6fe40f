"""JumpReLU SAE: a trainable threshold per latent and an L0 penalty, both learned through a
straight-through estimator."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from traitlens.sae.architectures.base import Architecture
from traitlens.sae.encoding import Encoding

if TYPE_CHECKING:
    from traitlens.sae.model import SparseAutoencoder


class _Threshold(torch.autograd.Function):
    """JumpReLU ``pre * H(pre - theta)`` or, with ``step=True``, the step ``H(pre - theta)`` that
    the L0 penalty counts. ``theta = exp(log_threshold)`` learns through a straight-through
    estimator: the rectangle kernel of width ``bandwidth`` stands in for H's derivative."""

    @staticmethod
    def forward(ctx: Any, pre_nw: torch.Tensor, log_threshold_w: torch.Tensor, bandwidth: float, step: bool) -> torch.Tensor:
        threshold_w = log_threshold_w.exp()
        ctx.save_for_backward(pre_nw, threshold_w)
        ctx.bandwidth, ctx.step = bandwidth, step
        active_nw = (pre_nw > threshold_w).to(pre_nw.dtype)
        return active_nw if step else pre_nw * active_nw

    @staticmethod
    def backward(ctx: Any, grad_nw: torch.Tensor) -> tuple[Any, ...]:
        pre_nw, threshold_w = ctx.saved_tensors
        eps = ctx.bandwidth
        in_window_nw = ((pre_nw - threshold_w).abs() < eps / 2).to(grad_nw.dtype)
        scale_w = 1.0 / eps if ctx.step else threshold_w / eps  # d/dtheta of H, or of pre * H
        grad_threshold_w = -(scale_w * in_window_nw * grad_nw).sum(0)
        grad_pre = None if ctx.step else grad_nw * (pre_nw > threshold_w)
        return grad_pre, grad_threshold_w * threshold_w, None, None


class JumpReLU(Architecture):
    name = "jumprelu"
    description = "jumprelu (learned thresholds, L0 penalty, --l1)"
    config_fields: ClassVar[dict[str, float]] = {"jumprelu_initial_threshold": 0.001, "jumprelu_bandwidth": 0.001}

    def add_parameters(self, sae: SparseAutoencoder) -> None:
        initial = sae.config.own_fields["jumprelu_initial_threshold"]
        sae.log_threshold = nn.Parameter(torch.full((sae.config.width,), math.log(initial)))

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        return _Threshold.apply(pre_nw, sae.log_threshold, sae.config.own_fields["jumprelu_bandwidth"], False)

    def sparsity_penalty(self, sae: SparseAutoencoder, encoding: Encoding) -> torch.Tensor:
        """Mean number of active latents per token, differentiable in the thresholds."""
        assert encoding.pre_nw is not None  # a dense architecture keeps its pre-activations
        step_nw = _Threshold.apply(encoding.pre_nw, sae.log_threshold, sae.config.own_fields["jumprelu_bandwidth"], True)
        return step_nw.sum(1).mean()
