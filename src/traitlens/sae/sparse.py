"""Sparse codes and the kernels that keep TopK-family SAEs from paying dense costs.

Only the encoder's forward product is (batch x d_in x width). Selecting the active latents,
decoding them, and every gradient after that touch only the ``nnz = batch * k`` active entries:
decoding is an ``embedding_bag`` over decoder rows, and the encoder's backward pass scatters into
the active encoder rows only. For TopK the product itself is made a block of rows at a time and
each block's selection taken while the block is still in cache (:func:`blocked_topk`), so the
(batch x width) pre-activations never exist in full.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F


class Pattern:
    """Where the entries of a selection are, in the two layouts its products need: offsets of each
    row's entries (for ``embedding_bag``, entries grouped by row) and the entries ordered by latent
    (for the (width, n_rows) CSR products of the weight gradients). Each is computed once, on first
    use, and shared by the encoder's and the decoder's backward passes."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, width: int) -> None:
        self.rows, self.cols, self.n_rows, self.width = rows, cols, n_rows, width

    @cached_property
    def row_offsets(self) -> torch.Tensor:
        return torch.searchsorted(self.rows, torch.arange(self.n_rows, device=self.rows.device))

    @cached_property
    def _latent_order(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        order = torch.argsort(self.cols, stable=True)
        crow = torch.searchsorted(self.cols[order], torch.arange(self.width + 1, device=self.cols.device))
        return order, crow, self.rows[order]

    def by_latent(self, weights: torch.Tensor) -> torch.Tensor:
        """The (width, n_rows) sparse matrix with ``weights`` at (cols, rows), in CSR form, so that
        ``by_latent(w) @ y_nd`` sums weighted rows of ``y`` into each latent: O(nnz * d)."""
        order, crow, rows_by_latent = self._latent_order
        with warnings.catch_warnings():  # CSR support is marked beta; the product we use is stable
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, rows_by_latent, weights[order], (self.width, self.n_rows))


@dataclass
class SparseCodes:
    """The active latents of a batch: entry ``j`` is latent ``cols[j]`` of row ``rows[j]`` with
    value ``values[j]``; entries are grouped by row, rows in increasing order."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_rows: int
    width: int
    pattern: Pattern | None = None
    """Where the entries are (made from rows and cols when not given)."""

    def __post_init__(self) -> None:
        if self.pattern is None:
            self.pattern = Pattern(self.rows, self.cols, self.n_rows, self.width)

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


# CPU blocks of at most 24 MiB of fp32 pre-activations, in one buffer reused from step to step: the
# full (batch x width) pre-activations (100 MB at 4096 x 6144) never exist, at about the speed of
# one product and one selection over the whole batch (docs/benchmarks.md); on a GPU the whole
# batch is one block.
BLOCK_ELEMENTS = 6 * 2**20
MIN_BLOCK_ROWS = 64


@dataclass
class Selection:
    """Entries (rows, cols) of a batch's pre-activations and their values there (detached)."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor


def blocked_topk(centered_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor, k: int,
                 among_w: torch.Tensor | None = None, among_k: int = 0) -> tuple[Selection, Selection | None]:
    """The ``k`` largest pre-activations of each row of ``centered_nd @ W_enc.T + b_enc`` and, when
    ``among_w`` (a bool mask of latents, not all False) is given, the ``among_k`` largest among
    those latents alone (AuxK's dead latents); without autograd.

    Rows are cut into blocks of equal size, at least ``MIN_BLOCK_ROWS`` (a product of a few rows
    may take another kernel and round differently): with the BLAS we build with, every
    pre-activation, and hence every selection, is then bit for bit the one of the full product.

    Under autocast (``traitlens train --precision bfloat16``) the product runs in autocast's dtype,
    as autocast would run it, and the selected values keep that dtype."""
    n_rows, width = centered_nd.shape[0], w_enc_wd.shape[0]
    device_type = centered_nd.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else centered_nd.dtype
    if centered_nd.is_cuda or not n_rows:  # a GPU's caching allocator and its fast top-k need no blocks
        n_blocks, buffer_bw = 1, None
    else:
        n_blocks = math.ceil(n_rows / max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // width))
        buffer_bw = _block_buffer(math.ceil(n_rows / n_blocks), width, dtype)
    outside_w, among_k = _outside(among_w, among_k)
    chosen, among = [], []
    # autocast leaves products with an out= buffer alone: the casts are made here, once per batch
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        w_enc_t, b_enc = w_enc_wd.to(dtype).t(), b_enc_w.to(dtype)
        for block_bd in centered_nd.to(dtype).tensor_split(n_blocks):
            out = None if buffer_bw is None else buffer_bw[: len(block_bd)]
            block_bw = torch.addmm(b_enc, block_bd, w_enc_t, out=out)
            chosen.append(block_bw.topk(k, dim=1, sorted=False))
            if outside_w is not None:
                among.append(block_bw.masked_fill(outside_w, float("-inf")).topk(among_k, dim=1, sorted=False))
    return _selection(chosen), (_selection(among) if outside_w is not None else None)


_BLOCK_BUFFERS: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}


def _block_buffer(rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """One CPU block of pre-activations per shape, reused from step to step: a fresh buffer of this
    size every step costs page faults on its first write that took about a tenth of the step. At
    most 4 shapes are kept (a sweep trains several widths at once), each at most BLOCK_ELEMENTS."""
    key = (rows, width, dtype)
    if key not in _BLOCK_BUFFERS:
        if len(_BLOCK_BUFFERS) >= 4:
            _BLOCK_BUFFERS.clear()
        _BLOCK_BUFFERS[key] = torch.empty((rows, width), dtype=dtype)
    return _BLOCK_BUFFERS[key]


def top_among(pre_nw: torch.Tensor, among_w: torch.Tensor, among_k: int) -> Selection:
    """The ``among_k`` largest pre-activations of each row among the latents of ``among_w`` (a
    bool mask, not all False); ``pre_nw`` without autograd."""
    outside_w, among_k = _outside(among_w, among_k)
    assert outside_w is not None
    return _selection([pre_nw.masked_fill(outside_w, float("-inf")).topk(among_k, dim=1, sorted=False)])


def _outside(among_w: torch.Tensor | None, among_k: int) -> tuple[torch.Tensor | None, int]:
    """The latents to leave out, and how many to take among the others (at most as many as there are)."""
    if among_w is None:
        return None, among_k
    return ~among_w, min(among_k, int(among_w.sum()))


def _selection(blocks: list[Any]) -> Selection:
    """Blocks of (values, cols) of consecutive rows (top-k results) as one selection, rows in increasing order."""
    values_nk, cols_nk = torch.cat([values for values, _ in blocks]), torch.cat([cols for _, cols in blocks])
    rows_nk = torch.arange(len(cols_nk), device=cols_nk.device)[:, None].expand_as(cols_nk)
    return Selection(rows_nk.reshape(-1), cols_nk.reshape(-1), values_nk.reshape(-1))


def batch_topk_selection(pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the ``k * batch`` largest pre-activations of the whole batch, by row."""
    flat = pre_nw.reshape(-1).topk(k * pre_nw.shape[0], sorted=False).indices.sort().values
    return flat // pre_nw.shape[1], flat % pre_nw.shape[1]


class _Preactivations(torch.autograd.Function):
    """``pre[rows, cols]`` of ``pre = x @ W_enc.T + b_enc``, given as ``values`` computed without
    autograd; the backward pass costs O(nnz * d_in) instead of a dense (batch x width) product."""

    @staticmethod
    def forward(ctx: Any, values_j: torch.Tensor, x_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor,
                pattern: Pattern) -> torch.Tensor:
        ctx.save_for_backward(x_nd, w_enc_wd)
        ctx.pattern = pattern
        return values_j.clone()

    @staticmethod
    def backward(ctx: Any, grad_j: torch.Tensor) -> tuple[Any, ...]:
        x_nd, w_enc_wd = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:  # grad_x[n] = sum_j grad_j W_enc[cols_j]: a bag over encoder rows
            grad_x = F.embedding_bag(pattern.cols, w_enc_wd, pattern.row_offsets, mode="sum", per_sample_weights=grad_j)
        if ctx.needs_input_grad[2]:  # grad_W_enc[c] = sum_j grad_j x[rows_j]
            grad_w = pattern.by_latent(grad_j) @ x_nd
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(pattern.width, dtype=grad_j.dtype, device=grad_j.device).index_add_(0, pattern.cols, grad_j)
        return None, grad_x, grad_w, grad_b, None


class _DecodeCodes(torch.autograd.Function):
    """sum_j values_j W_dec[cols_j] per row, with an O(nnz * d) backward pass."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, w_dec_wd: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        ctx.save_for_backward(values, w_dec_wd)
        ctx.pattern = pattern
        return F.embedding_bag(pattern.cols, w_dec_wd, pattern.row_offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx: Any, grad_nd: torch.Tensor) -> tuple[Any, ...]:
        values, w_dec_wd = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:  # grad_values_j = grad[rows_j] . W_dec[cols_j], PyTorch's bag kernel
            leaf = values.detach().requires_grad_(True)
            with torch.enable_grad():
                bag_nd = F.embedding_bag(pattern.cols, w_dec_wd.detach(), pattern.row_offsets, mode="sum", per_sample_weights=leaf)
            (grad_values,) = torch.autograd.grad(bag_nd, leaf, grad_outputs=grad_nd)
        if ctx.needs_input_grad[1]:  # grad_W_dec[c] = sum_j values_j grad[rows_j]
            grad_w = pattern.by_latent(values.detach()) @ grad_nd
        return grad_values, grad_w, None


def preactivations_at(selection: Selection, x_nd: torch.Tensor, w_enc_wd: torch.Tensor, b_enc_w: torch.Tensor,
                      pattern: Pattern | None = None) -> torch.Tensor:
    """The selected pre-activations, with the encoder's gradient (O(nnz * d_in) backward);
    ``pattern``, the selection's, when the decoder will share it."""
    if pattern is None:
        pattern = Pattern(selection.rows, selection.cols, x_nd.shape[0], w_enc_wd.shape[0])
    # values from a bf16 product (autocast) join the float32 sparse kernels in the input's dtype
    values = selection.values.detach().to(x_nd.dtype)
    out: torch.Tensor = _Preactivations.apply(values, x_nd, w_enc_wd, b_enc_w, pattern)
    return out


def decode_codes(codes: SparseCodes, w_dec_wd: torch.Tensor) -> torch.Tensor:
    """Sum of the active decoder rows weighted by their values, (n_rows, d); no bias."""
    out: torch.Tensor = _DecodeCodes.apply(codes.values, w_dec_wd, codes.pattern)
    return out
