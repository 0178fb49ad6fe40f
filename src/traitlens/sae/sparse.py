"""Sparse codes and the kernels that keep TopK-family SAEs from paying dense costs.

Only the encoder's forward product is (batch x d_in x width). Selecting the active latents,
decoding them, and every gradient after that touch only the ``nnz = batch * k`` active entries:
decoding is an ``embedding_bag`` over decoder rows, and the encoder's backward pass scatters into
the active encoder rows only.
"""

from __future__ import annotations

import warnings
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


def _by_latent(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, width: int, n_rows: int) -> torch.Tensor:
    """The (width, n_rows) sparse matrix with ``weights`` at (cols, rows), in CSR form, so that
    ``_by_latent(...) @ y_nd`` sums weighted rows of ``y`` into each latent: O(nnz * d)."""
    order = torch.argsort(cols, stable=True)
    crow = torch.searchsorted(cols[order], torch.arange(width + 1, device=cols.device))
    with warnings.catch_warnings():  # CSR support is marked beta; the product we use is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, rows[order], weights[order], (width, n_rows))


def _row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.searchsorted(rows, torch.arange(n_rows, device=rows.device))


class _GatherPreactivations(torch.autograd.Function):
    """``pre[rows, cols]`` where ``pre = x @ W_enc.T + b_enc`` was computed without autograd;
    the backward pass costs O(nnz * d_in) instead of a dense (batch x width) product."""

    @staticmethod
    def forward(ctx: Any, pre_nw: torch.Tensor, x_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_nd, w_enc_wd, rows, cols)
        return pre_nw.reshape(-1).index_select(0, rows * pre_nw.shape[1] + cols)

    @staticmethod
    def backward(ctx: Any, grad_j: torch.Tensor) -> tuple[Any, ...]:
        x_nd, w_enc_wd, rows, cols = ctx.saved_tensors
        width, n_rows = w_enc_wd.shape[0], x_nd.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:  # grad_x[n] = sum_j grad_j W_enc[cols_j]: a bag over encoder rows
            grad_x = F.embedding_bag(cols, w_enc_wd, _row_offsets(rows, n_rows), mode="sum", per_sample_weights=grad_j)
        if ctx.needs_input_grad[2]:  # grad_W_enc[c] = sum_j grad_j x[rows_j]
            grad_w = _by_latent(rows, cols, grad_j, width, n_rows) @ x_nd
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(width, dtype=grad_j.dtype, device=grad_j.device).index_add_(0, cols, grad_j)
        return None, grad_x, grad_w, grad_b, None, None


class _DecodeCodes(torch.autograd.Function):
    """sum_j values_j W_dec[cols_j] per row, with an O(nnz * d) backward pass."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, w_dec_wd: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                n_rows: int) -> torch.Tensor:
        ctx.save_for_backward(values, w_dec_wd, rows, cols)
        ctx.n_rows = n_rows
        return F.embedding_bag(cols, w_dec_wd, _row_offsets(rows, n_rows), mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx: Any, grad_nd: torch.Tensor) -> tuple[Any, ...]:
        values, w_dec_wd, rows, cols = ctx.saved_tensors
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:  # grad_values_j = grad[rows_j] . W_dec[cols_j], PyTorch's bag kernel
            leaf = values.detach().requires_grad_(True)
            with torch.enable_grad():
                bag_nd = F.embedding_bag(cols, w_dec_wd.detach(), _row_offsets(rows, ctx.n_rows), mode="sum",
                                         per_sample_weights=leaf)
            (grad_values,) = torch.autograd.grad(bag_nd, leaf, grad_outputs=grad_nd)
        if ctx.needs_input_grad[1]:  # grad_W_dec[c] = sum_j values_j grad[rows_j]
            grad_w = _by_latent(rows, cols, values.detach(), w_dec_wd.shape[0], ctx.n_rows) @ grad_nd
        return grad_values, grad_w, None, None, None


def gather_preactivations(pre_nw: torch.Tensor, x_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor,
                          rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _GatherPreactivations.apply(pre_nw.detach(), x_nd, w_enc_wd, b_enc_w, rows, cols)
    return out


def decode_codes(codes: SparseCodes, w_dec_wd: torch.Tensor) -> torch.Tensor:
    """Sum of the active decoder rows weighted by their values, (n_rows, d); no bias."""
    out: torch.Tensor = _DecodeCodes.apply(codes.values, w_dec_wd, codes.rows, codes.cols, codes.n_rows)
    return out
