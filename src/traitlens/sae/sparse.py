"""Sparse codes and the kernels that keep TopK-family SAEs from paying dense costs.

Only the encoder's forward product is (batch x d_in x width). Selecting the active latents,
decoding them, and every gradient after that touch only the ``nnz = batch * k`` active entries:
decoding is an ``embedding_bag`` over decoder rows, and the encoder's backward pass scatters into
the active encoder rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class SparseCodes:
    """The active latents of a batch: entry ``j`` is latent ``cols[j]`` of row ``rows[j]`` with
    value ``values[j]``; entries are grouped by row, rows in increasing order."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_rows: int
    width: int

    @property
    def offsets(self) -> torch.Tensor:
        """Where each row's entries start (``embedding_bag`` offsets)."""
        return torch.searchsorted(self.rows, torch.arange(self.n_rows, device=self.rows.device))

    def to_dense(self) -> torch.Tensor:
        dense_nw = torch.zeros(self.n_rows, self.width, dtype=self.values.dtype, device=self.values.device)
        return dense_nw.index_put((self.rows, self.cols), self.values)

    def keep(self, mask: torch.Tensor) -> SparseCodes:
        return SparseCodes(self.rows[mask], self.cols[mask], self.values[mask], self.n_rows, self.width)


def topk_selection(pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the k largest pre-activations of each row."""
    cols_nk = pre_nw.topk(k, dim=1, sorted=False).indices
    rows_nk = torch.arange(pre_nw.shape[0], device=pre_nw.device)[:, None].expand_as(cols_nk)
    return rows_nk.reshape(-1), cols_nk.reshape(-1)


def batch_topk_selection(pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the ``k * batch`` largest pre-activations of the whole batch, by row."""
    flat = pre_nw.reshape(-1).topk(k * pre_nw.shape[0], sorted=False).indices.sort().values
    return flat // pre_nw.shape[1], flat % pre_nw.shape[1]


class _GatherPreactivations(torch.autograd.Function):
    """``pre[rows, cols]`` where ``pre = x @ W_enc.T + b_enc`` was computed without autograd;
    the backward pass costs O(nnz * d_in) instead of a dense (batch x width) product."""

    @staticmethod
    def forward(ctx: Any, pre_nw: torch.Tensor, x_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_nd, w_enc_wd, rows, cols)
        ctx.n_bias = b_enc_w.shape[0]
        return pre_nw[rows, cols]

    @staticmethod
    def backward(ctx: Any, grad_j: torch.Tensor) -> tuple[Any, ...]:
        x_nd, w_enc_wd, rows, cols = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            offsets = torch.searchsorted(rows, torch.arange(x_nd.shape[0], device=rows.device))
            grad_x = F.embedding_bag(cols, w_enc_wd, offsets, mode="sum", per_sample_weights=grad_j)
        if ctx.needs_input_grad[2]:
            grad_w = torch.zeros_like(w_enc_wd).index_add_(0, cols, x_nd[rows] * grad_j[:, None])
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(ctx.n_bias, dtype=grad_j.dtype, device=grad_j.device).index_add_(0, cols, grad_j)
        return None, grad_x, grad_w, grad_b, None, None


def gather_preactivations(pre_nw: torch.Tensor, x_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor,
                          rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _GatherPreactivations.apply(pre_nw.detach(), x_nd, w_enc_wd, b_enc_w, rows, cols)
    return out


def decode_codes(codes: SparseCodes, w_dec_wd: torch.Tensor) -> torch.Tensor:
    """Sum of the active decoder rows weighted by their values, (n_rows, d); no bias."""
    return F.embedding_bag(codes.cols, w_dec_wd, codes.offsets, mode="sum", per_sample_weights=codes.values)
