"""What one training forward of an SAE produces, whatever its architecture."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from traitlens.sae.sparse import SparseCodes


@dataclass
class Encoding:
    """The latents (sparse codes or dense) and, detached, the pre-activations (for dead-latent
    AuxK selection and statistics)."""

    pre_nw: torch.Tensor
    codes: SparseCodes | None = None
    latents_nw: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        if self.latents_nw is not None:
            return self.latents_nw
        assert self.codes is not None
        return self.codes.to_dense()
