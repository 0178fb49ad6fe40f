"""TopK SAE: each token keeps its ``k`` largest pre-activations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from traitlens.sae.architectures.base import Architecture
from traitlens.sae.encoding import Encoding

if TYPE_CHECKING:
    from traitlens.sae.model import SparseAutoencoder
from traitlens.sae.sparse import Pattern, Selection, SparseCodes, blocked_topk, preactivations_at, top_among, topk_selection


class SparseCoded(Architecture):
    """Trained on sparse codes: which latents are active is chosen without autograd, then only
    their pre-activations get the encoder's gradient, so the dense (n, width) product never enters
    the graph."""

    sparse_coded = True

    def select(self, pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and columns of the latents that stay active."""
        raise NotImplementedError

    def encode_for_training(self, sae: SparseAutoencoder, xn_nd: torch.Tensor, dead_w: torch.Tensor | None = None,
                            aux_k: int = 0) -> Encoding:
        centered_nd = xn_nd - sae.b_dec
        with torch.no_grad():
            pre_nw = torch.addmm(sae.b_enc, centered_nd, sae.W_enc.t())
            rows, cols = self.select(pre_nw, sae.config.k)
            chosen = Selection(rows, cols, pre_nw.reshape(-1).index_select(0, rows * pre_nw.shape[1] + cols))
            dead = None if dead_w is None else top_among(pre_nw, dead_w, aux_k)
        return sparse_encoding(sae, centered_nd, chosen, dead, pre_nw)


def sparse_encoding(sae: SparseAutoencoder, centered_nd: torch.Tensor, chosen: Selection, dead: Selection | None,
                    pre_nw: torch.Tensor | None) -> Encoding:
    pattern = Pattern(chosen.rows, chosen.cols, centered_nd.shape[0], sae.config.width)  # shared by both backward passes
    values = preactivations_at(chosen, centered_nd, sae.W_enc, sae.b_enc, pattern).relu()
    codes = SparseCodes(chosen.rows, chosen.cols, values, centered_nd.shape[0], sae.config.width, pattern)
    return Encoding(pre_nw=pre_nw, codes=codes, dead=dead)


class TopK(SparseCoded):
    name = "topk"
    description = "topk (k per token)"

    def select(self, pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return topk_selection(pre_nw, k)

    def encode_for_training(self, sae: SparseAutoencoder, xn_nd: torch.Tensor, dead_w: torch.Tensor | None = None,
                            aux_k: int = 0) -> Encoding:
        """Each token's own selection: made a block of rows at a time, the full pre-activations never kept."""
        centered_nd = xn_nd - sae.b_dec
        chosen, dead = blocked_topk(centered_nd, sae.W_enc, sae.b_enc, sae.config.k, dead_w, aux_k)
        return sparse_encoding(sae, centered_nd, chosen, dead, None)

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        values, cols = pre_nw.topk(sae.config.k, dim=1)
        return torch.zeros_like(pre_nw).scatter_(1, cols, values.relu())
