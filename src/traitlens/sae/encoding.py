"""What one training forward of an SAE produces, whatever its architecture."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from traitlens.sae.sparse import Selection, SparseCodes


@dataclass
class Encoding:
    """The latents (sparse codes or dense), the detached pre-activations where the architecture
    made them in full (a blocked TopK never does), and, when dead latents were named, the
    largest pre-activations among them (AuxK's candidates, detached)."""

    pre_nw: torch.Tensor | None = None
    codes: SparseCodes | None = None
    latents_nw: torch.Tensor | None = None
    dead: Selection | None = None

    def dense(self) -> torch.Tensor:
        if self.latents_nw is not None:
            return self.latents_nw
        assert self.codes is not None
        return self.codes.to_dense()
