"""BatchTopK SAE: the ``k * batch`` largest pre-activations of a batch while training; at inference
a threshold learned after training, so a token's latents do not depend on its batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from traitlens.sae.architectures.topk import SparseCoded

if TYPE_CHECKING:
    from traitlens.sae.model import SparseAutoencoder
from traitlens.sae.sparse import batch_topk_selection


class BatchTopK(SparseCoded):
    name = "batchtopk"
    description = "batchtopk (k per token on average over a batch)"

    def select(self, pre_nw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_topk_selection(pre_nw, k)

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        return pre_nw * (pre_nw > sae.threshold)

    @torch.no_grad()
    def after_training(self, sae: SparseAutoencoder, sample_nd: torch.Tensor) -> None:
        """The inference threshold: the value above which, on the sample, exactly ``k`` latents
        per token are active on average — so inference keeps the sparsity training had."""
        pre_nw = sae.pre_activations(sae.normalize(sample_nd))
        flat = pre_nw.reshape(-1)
        kept = flat.topk(min(sae.config.k * len(sample_nd) + 1, flat.numel())).values
        between = (kept[-2] + kept[-1]) / 2 if len(kept) > 1 else kept[-1]  # strictly between the last kept and the next
        sae.threshold.fill_(float(between.clamp_min(0.0)))
