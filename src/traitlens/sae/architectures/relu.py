"""ReLU SAE: dense latents kept sparse by an L1 penalty (the original SAE recipe)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from traitlens.sae.architectures.base import Architecture
from traitlens.sae.encoding import Encoding

if TYPE_CHECKING:
    from traitlens.sae.model import SparseAutoencoder


class ReLU(Architecture):
    name = "relu"
    description = "relu (L1 penalty, --l1)"

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        return pre_nw.relu()

    def sparsity_penalty(self, sae: SparseAutoencoder, encoding: Encoding) -> torch.Tensor:
        return encoding.dense().sum(1).mean()
