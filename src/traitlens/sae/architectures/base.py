"""What an SAE architecture is, and the registry the model, trainer and CLI look it up in.

An architecture decides how pre-activations become sparse latents, while training and at
inference; it may add parameters, its own config fields, a sparsity penalty and a step after
training. Everything else (normalization, the encoder product, decoding, Matryoshka prefixes,
AuxK, checkpoints) is shared. A new one is a subclass in a module of its own plus one
:func:`register` call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from traitlens.sae.encoding import Encoding

if TYPE_CHECKING:
    from traitlens.sae.model import SparseAutoencoder


class Architecture:
    """One way of making an SAE's latents sparse. Stateless: the SAE passed in holds the weights."""

    name: ClassVar[str]
    """Its ``--arch`` value and the ``activation`` of a saved config."""
    description: ClassVar[str]
    """A few words for ``--arch``'s help."""
    sparse_coded: ClassVar[bool] = False
    """Trained on sparse codes of ``k`` active latents per token (so ``k`` applies, dead latents
    get AuxK and runs are named by ``k``); otherwise on dense latents with a sparsity penalty."""
    config_fields: ClassVar[dict[str, float]] = {}
    """Its own config fields (saved beside the shared ones) and their defaults: positive numbers."""

    def check(self, fields: dict[str, Any]) -> str | None:
        """Why these values of the architecture's own fields are invalid (None when they are valid)."""
        for name, value in fields.items():
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
                return f"{name} must be a finite number above 0, got {value!r}"
        return None

    def default_matryoshka_widths(self, width: int) -> tuple[int, ...]:
        """Nested prefixes a config of this architecture gets when it names none."""
        return ()

    def add_parameters(self, sae: SparseAutoencoder) -> None:
        """Register the architecture's own parameters or buffers on a new SAE."""

    def encode_for_training(self, sae: SparseAutoencoder, xn_nd: torch.Tensor, dead_w: torch.Tensor | None = None,
                            aux_k: int = 0) -> Encoding:
        """Latents of normalized inputs as training uses them (dense here, with autograd). A
        sparse-coded architecture also picks the ``aux_k`` largest pre-activations among the dead
        latents ``dead_w`` (a bool mask, not all False) for AuxK; a dense one has no AuxK."""
        pre_nw = sae.pre_activations(xn_nd)
        return Encoding(pre_nw=pre_nw.detach(), latents_nw=self.activate(sae, pre_nw))

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        """Dense latents from pre-activations at inference, a function of each token alone."""
        raise NotImplementedError

    def sparsity_penalty(self, sae: SparseAutoencoder, encoding: Encoding) -> torch.Tensor | None:
        """The term the run's sparsity coefficient multiplies (None: the architecture needs none)."""
        return None

    def after_training(self, sae: SparseAutoencoder, sample_nd: torch.Tensor) -> None:
        """A last step on finished weights, given a sample of raw training tokens."""


ARCHITECTURES: dict[str, Architecture] = {}
"""Every registered architecture by name, in registration order."""


def register(architecture: Architecture) -> Architecture:
    """Make ``architecture`` available to configs, the trainer and ``traitlens train --arch``."""
    if architecture.name in ARCHITECTURES:
        raise ValueError(f"an SAE architecture named {architecture.name!r} is already registered")
    ARCHITECTURES[architecture.name] = architecture
    return architecture
