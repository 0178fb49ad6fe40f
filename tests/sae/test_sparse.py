from __future__ import annotations

import pytest
import torch

from traitlens.sae import sparse as sparse_module
from traitlens.sae.sparse import (
    Selection,
    SparseCodes,
    batch_topk_selection,
    blocked_topk,
    decode_codes,
    preactivations_at,
    top_among,
    topk_selection,
)


def _dense_reference(pre_nw: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(pre_nw, dtype=torch.bool)
    mask[rows, cols] = True
    return torch.where(mask, pre_nw, torch.zeros_like(pre_nw))


@pytest.mark.parametrize("select", [topk_selection, batch_topk_selection])
def test_sparse_path_has_the_dense_gradients(select) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    x_nd = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    w_enc = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(20, dtype=torch.float64, requires_grad=True)
    w_dec = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(12, 6, dtype=torch.float64)
    params = [x_nd, w_enc, b_enc, w_dec]

    pre_nw = torch.addmm(b_enc, x_nd, w_enc.t())
    rows, cols = select(pre_nw.detach(), 3)
    chosen = Selection(rows, cols, pre_nw.detach()[rows, cols])
    values = preactivations_at(chosen, x_nd, w_enc, b_enc).relu()
    recon = decode_codes(SparseCodes(rows, cols, values, 12, 20), w_dec)
    sparse_grads = torch.autograd.grad((recon - target).square().sum(), params)

    dense_recon = _dense_reference(pre_nw, rows, cols).relu() @ w_dec
    dense_grads = torch.autograd.grad((dense_recon - target).square().sum(), params)
    torch.testing.assert_close(recon, dense_recon)
    for sparse, dense in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(sparse, dense)


def test_topk_keeps_k_per_row_and_batch_topk_keeps_the_batch_largest() -> None:
    pre_nw = torch.tensor([[5.0, 1.0, 4.0, 0.0], [0.5, 0.2, 0.1, 0.3], [9.0, 8.0, 7.0, 6.0]])
    rows, cols = topk_selection(pre_nw, 2)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0), (0, 2), (1, 0), (1, 3), (2, 0), (2, 1)]
    rows, cols = batch_topk_selection(pre_nw, 2)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert torch.equal(rows, rows.sort().values)  # grouped by row, as embedding_bag needs


def test_codes_densify_and_keep_prefixes() -> None:
    codes = SparseCodes(torch.tensor([0, 0, 2]), torch.tensor([1, 3, 0]), torch.tensor([1.0, 2.0, 3.0]), 3, 4)
    assert codes.to_dense().tolist() == [[0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]
    assert codes.pattern is not None and codes.pattern.row_offsets.tolist() == [0, 2, 2]
    assert codes.keep(codes.cols < 2).to_dense().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 0]]
    w_dec = torch.arange(8.0).reshape(4, 2)
    torch.testing.assert_close(decode_codes(codes, w_dec), codes.to_dense() @ w_dec)


def _assert_same_entries(selection: Selection, rows: torch.Tensor, cols: torch.Tensor, pre_nw: torch.Tensor) -> None:
    """The same (row, col) entries, and values equal to the full product's up to rounding (a block
    of rows may be multiplied by another kernel)."""
    order = sorted(range(len(rows)), key=lambda j: (int(rows[j]), int(cols[j])))
    got = sorted(range(len(selection.rows)), key=lambda j: (int(selection.rows[j]), int(selection.cols[j])))
    assert [(int(selection.rows[j]), int(selection.cols[j])) for j in got] == [(int(rows[j]), int(cols[j])) for j in order]
    torch.testing.assert_close(selection.values[got], pre_nw[rows, cols][order])


@pytest.mark.parametrize("block_rows", [1, 4, 7, 64])
def test_blocked_topk_selects_what_the_full_product_selects(monkeypatch: pytest.MonkeyPatch, block_rows: int) -> None:
    torch.manual_seed(0)
    x_nd, w_enc = torch.randn(23, 6, dtype=torch.float64), torch.randn(20, 6, dtype=torch.float64)
    b_enc = torch.randn(20, dtype=torch.float64)
    dead_w = torch.zeros(20, dtype=torch.bool)
    dead_w[[2, 5, 11, 17]] = True
    monkeypatch.setattr(sparse_module, "BLOCK_ELEMENTS", block_rows * 20)  # blocks of about block_rows rows
    monkeypatch.setattr(sparse_module, "MIN_BLOCK_ROWS", 1)
    chosen, dead = blocked_topk(x_nd, w_enc, b_enc, 3, dead_w, 3)
    pre_nw = torch.addmm(b_enc, x_nd, w_enc.t())
    rows, cols = topk_selection(pre_nw, 3)
    _assert_same_entries(chosen, rows, cols, pre_nw)
    assert torch.equal(chosen.rows, chosen.rows.sort().values)  # grouped by row, as embedding_bag needs
    masked_nw = pre_nw.masked_fill(~dead_w, float("-inf"))  # AuxK's candidates: the largest among the dead only
    rows, cols = topk_selection(masked_nw, 3)
    assert dead is not None
    _assert_same_entries(dead, rows, cols, pre_nw)
    among = top_among(pre_nw, dead_w, 8)  # more asked than there are dead latents: all of them
    assert sorted(set(among.cols.tolist())) == [2, 5, 11, 17] and len(among.cols) == 23 * 4


def test_blocked_selection_has_the_dense_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    x_nd = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    w_enc = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(20, dtype=torch.float64, requires_grad=True)
    monkeypatch.setattr(sparse_module, "BLOCK_ELEMENTS", 2 * 20)
    monkeypatch.setattr(sparse_module, "MIN_BLOCK_ROWS", 1)
    chosen, _ = blocked_topk(x_nd.detach(), w_enc.detach(), b_enc.detach(), 3)
    values = preactivations_at(chosen, x_nd, w_enc, b_enc)
    sparse_grads = torch.autograd.grad(values.square().sum(), [x_nd, w_enc, b_enc])
    pre_nw = torch.addmm(b_enc, x_nd, w_enc.t())
    dense_grads = torch.autograd.grad(_dense_reference(pre_nw, chosen.rows, chosen.cols).square().sum(), [x_nd, w_enc, b_enc])
    for blocked, dense in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(blocked, dense)


def test_an_empty_batch_selects_nothing() -> None:
    chosen, dead = blocked_topk(torch.empty(0, 6), torch.randn(20, 6), torch.zeros(20), 3, torch.ones(20, dtype=torch.bool), 4)
    assert len(chosen.rows) == len(chosen.values) == 0 and dead is not None and len(dead.cols) == 0


def test_under_bf16_autocast_the_selection_is_the_bf16_products(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    x_nd, w_enc, b_enc = torch.randn(40, 16), torch.randn(64, 16), torch.randn(64)
    monkeypatch.setattr(sparse_module, "BLOCK_ELEMENTS", 8 * 64)
    monkeypatch.setattr(sparse_module, "MIN_BLOCK_ROWS", 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen, _ = blocked_topk(x_nd, w_enc, b_enc, 4)
        expected_nw = torch.addmm(b_enc, x_nd, w_enc.t())  # what autocast makes of the full product
    assert chosen.values.dtype == expected_nw.dtype == torch.bfloat16
    rows, cols = topk_selection(expected_nw, 4)
    _assert_same_entries(chosen, rows, cols, expected_nw)
    full_nw = torch.addmm(b_enc, x_nd, w_enc.t())
    assert not torch.equal(chosen.values.float(), full_nw[chosen.rows, chosen.cols])  # bf16 rounding, really taken
    values = preactivations_at(chosen, x_nd, w_enc.requires_grad_(), b_enc)  # the sparse kernels stay in float32
    assert values.dtype == torch.float32
