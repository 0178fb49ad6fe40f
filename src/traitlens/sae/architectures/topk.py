"""TopK SAE: each token keeps its ``k`` largest pre-activations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from traitlens.sae.architectures.base import Architecture
from traitlens.sae.encoding import Encoding

if TYPE_CHECKING:
    from traitlens.sae.model import SparseAutoencoder
from traitlens.sae.sparse import SparseCodes, gather_preactivations, topk_selection


class SparseCoded(Architecture):
    """Trained on sparse codes: which latents are active is chosen without autograd, then only
    their pre-activations are recomputed with it, so the dense (n, width) product never enters the
    graph."""

    sparse_coded = True

    def select(self, pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and columns of the latents that stay active."""
        raise NotImplementedError

    def encode_for_training(self, sae: SparseAutoencoder, xn_nd: torch.Tensor) -> Encoding:
        centered_nd = xn_nd - sae.b_dec
        with torch.no_grad():
            pre_nw = torch.addmm(sae.b_enc, centered_nd, sae.W_enc.t())
            rows, cols = self.select(pre_nw, sae.config.k)
        values = gather_preactivations(pre_nw, centered_nd, sae.W_enc, sae.b_enc, rows, cols).relu()
        return Encoding(pre_nw=pre_nw, codes=SparseCodes(rows, cols, values, xn_nd.shape[0], sae.config.width))


class TopK(SparseCoded):
    name = "topk"
    description = "topk (k per token)"

    def select(self, pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return topk_selection(pre_nw, k)

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        values, cols = pre_nw.topk(sae.config.k, dim=1)
        return torch.zeros_like(pre_nw).scatter_(1, cols, values.relu())
