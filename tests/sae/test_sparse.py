from __future__ import annotations

import pytest
import torch

from traitlens.sae.sparse import (
    SparseCodes,
    batch_topk_selection,
    decode_codes,
    gather_preactivations,
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
    values = gather_preactivations(pre_nw, x_nd, w_enc, b_enc, rows, cols).relu()
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
    assert codes.offsets.tolist() == [0, 2, 2]
    assert codes.keep(codes.cols < 2).to_dense().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 0]]
    w_dec = torch.arange(8.0).reshape(4, 2)
    torch.testing.assert_close(decode_codes(codes, w_dec), codes.to_dense() @ w_dec)
