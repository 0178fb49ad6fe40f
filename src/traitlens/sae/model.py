"""The sparse autoencoder: one module for every activation, Matryoshka prefixes optional.

Weights (safetensors names, see docs/formats.md): ``W_enc`` (width, d_in), ``b_enc`` (width),
``W_dec`` (width, d_in) with unit-norm rows, ``b_dec`` (d_in); buffers ``input_mean`` and
``input_scale`` (normalization), ``threshold`` (BatchTopK's inference threshold); JumpReLU adds
the parameter ``log_threshold`` (width). Both weight matrices are stored row-per-latent so the
rows of active latents are contiguous for the sparse kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from traitlens.sae.config import SAEConfig
from traitlens.sae.sparse import (
    SparseCodes,
    batch_topk_selection,
    decode_codes,
    gather_preactivations,
    topk_selection,
)


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


@dataclass
class Encoding:
    """What one training forward needs: the latents (sparse codes or dense) and, detached, the
    pre-activations (for dead-latent AuxK selection and statistics)."""

    pre_nw: torch.Tensor
    codes: SparseCodes | None = None
    latents_nw: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        if self.latents_nw is not None:
            return self.latents_nw
        assert self.codes is not None
        return self.codes.to_dense()


class SparseAutoencoder(nn.Module):
    """encode: (n, d_in) -> (n, width) latents; decode: latents -> (n, d_in); forward: both."""

    input_mean: torch.Tensor
    input_scale: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.d_in, config.width
        self.W_enc = nn.Parameter(torch.empty(w, d))
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.W_dec = nn.Parameter(torch.empty(w, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(d))
        self.register_buffer("threshold", torch.zeros(w))
        if config.activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((w,), math.log(config.jumprelu_initial_threshold)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random unit-norm decoder rows; the encoder starts as the decoder's transpose."""
        with torch.no_grad():
            nn.init.normal_(self.W_dec)
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec)

    @staticmethod
    def state_shapes(config: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Name and shape of every tensor of an SAE of ``config``, found without allocating it (on
        the meta device), so a saved file can be checked against its config before it is read."""
        with torch.device("meta"):
            return {name: tuple(tensor.shape) for name, tensor in SparseAutoencoder(config).state_dict().items()}

    # -- normalization -----------------------------------------------------------------------
    def normalize(self, x_nd: torch.Tensor) -> torch.Tensor:
        return (x_nd - self.input_mean) * self.input_scale

    def denormalize(self, y_nd: torch.Tensor) -> torch.Tensor:
        return y_nd / self.input_scale + self.input_mean

    # -- training-time encoding --------------------------------------------------------------
    def pre_activations(self, xn_nd: torch.Tensor) -> torch.Tensor:
        """(x_norm - b_dec) @ W_enc.T + b_enc, the one dense product, with autograd."""
        return torch.addmm(self.b_enc, xn_nd - self.b_dec, self.W_enc.t())

    def encode_for_training(self, xn_nd: torch.Tensor) -> Encoding:
        """Latents of normalized inputs in the form training uses (sparse for TopK-family)."""
        cfg = self.config
        if cfg.is_sparse_coded:
            centered_nd = xn_nd - self.b_dec
            with torch.no_grad():
                pre_nw = torch.addmm(self.b_enc, centered_nd, self.W_enc.t())
                select = topk_selection if cfg.activation == "topk" else batch_topk_selection
                rows, cols = select(pre_nw, cfg.k)
            values = gather_preactivations(pre_nw, centered_nd, self.W_enc, self.b_enc, rows, cols).relu()
            return Encoding(pre_nw=pre_nw, codes=SparseCodes(rows, cols, values, xn_nd.shape[0], cfg.width))
        pre_nw = self.pre_activations(xn_nd)
        if cfg.activation == "jumprelu":
            latents_nw = _Threshold.apply(pre_nw, self.log_threshold, cfg.jumprelu_bandwidth, False)
        else:
            latents_nw = pre_nw.relu()
        return Encoding(pre_nw=pre_nw.detach(), latents_nw=latents_nw)

    def jumprelu_l0(self, pre_nw: torch.Tensor) -> torch.Tensor:
        """Mean number of active latents per token, differentiable in the thresholds."""
        step_nw = _Threshold.apply(pre_nw, self.log_threshold, self.config.jumprelu_bandwidth, True)
        return step_nw.sum(1).mean()

    def decode_normalized(self, encoding: Encoding, prefix: int | None = None) -> torch.Tensor:
        """Reconstruction in normalized space from the first ``prefix`` latents (all by default)."""
        if encoding.codes is not None:
            codes = encoding.codes if prefix is None else encoding.codes.keep(encoding.codes.cols < prefix)
            return decode_codes(codes, self.W_dec) + self.b_dec
        assert encoding.latents_nw is not None
        latents_nw = encoding.latents_nw if prefix is None else encoding.latents_nw[:, :prefix]
        w_dec = self.W_dec if prefix is None else self.W_dec[:prefix]
        return latents_nw @ w_dec + self.b_dec

    # -- inference -----------------------------------------------------------------------------
    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Dense latents (n, width) of raw inputs. BatchTopK uses its learned threshold here, so a
        token's latents do not depend on the rest of its batch."""
        cfg = self.config
        pre_nw = self.pre_activations(self.normalize(x_nd))
        if cfg.activation == "topk":
            values, cols = pre_nw.topk(cfg.k, dim=1)
            return torch.zeros_like(pre_nw).scatter_(1, cols, values.relu())
        if cfg.activation == "batchtopk":
            return pre_nw * (pre_nw > self.threshold)
        if cfg.activation == "jumprelu":
            return pre_nw * (pre_nw > self.log_threshold.exp())
        return pre_nw.relu()

    def decode(self, latents_nw: torch.Tensor) -> torch.Tensor:
        """Raw-space reconstruction (n, d_in) of dense latents."""
        return self.denormalize(latents_nw @ self.W_dec + self.b_dec)

    def forward(self, x_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (n, width), reconstruction (n, d_in))."""
        latents_nw = self.encode(x_nd)
        return latents_nw, self.decode(latents_nw)
