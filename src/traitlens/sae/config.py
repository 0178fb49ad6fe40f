"""Typed configuration of one sparse autoencoder (saved beside its weights as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from traitlens.errors import TraitlensError

Activation = Literal["relu", "topk", "batchtopk", "jumprelu"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "topk", "batchtopk", "jumprelu")
Normalization = Literal["none", "norm", "standardize"]


class SAEConfigError(TraitlensError):
    """An SAE configuration is inconsistent or a saved config cannot be read."""


@dataclass(frozen=True)
class SAEConfig:
    """Architecture of a sparse autoencoder.

    ``activation`` picks how latents are made sparse: ``relu`` (with an L1 penalty), ``topk`` (the
    k largest per token), ``batchtopk`` (the ``k * batch`` largest per batch while training, a
    learned threshold at inference) or ``jumprelu`` (trainable per-latent thresholds, L0 penalty).
    ``matryoshka_widths`` adds nested prefixes (Matryoshka SAE): each prefix of the latents is
    trained to reconstruct the input on its own; it combines with any activation.
    ``normalization`` scales inputs before encoding and undoes it on decode: ``norm`` scales
    tokens so their mean norm is sqrt(d_in), ``standardize`` uses per-dimension mean and std.
    """

    d_in: int
    width: int
    activation: Activation = "topk"
    k: int = 32
    matryoshka_widths: tuple[int, ...] = ()
    normalization: Normalization = "none"
    jumprelu_initial_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise SAEConfigError(f"unknown SAE activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.d_in < 1 or self.width < 1:
            raise SAEConfigError(f"SAE sizes must be positive (d_in={self.d_in}, width={self.width})")
        if self.activation in ("topk", "batchtopk") and not 1 <= self.k <= self.width:
            raise SAEConfigError(f"k must be between 1 and the width {self.width}, got {self.k}")
        widths = self.matryoshka_widths
        if widths and (list(widths) != sorted(set(widths)) or widths[0] < 1 or widths[-1] != self.width):
            raise SAEConfigError(f"matryoshka widths must increase strictly and end at the width {self.width}, got {widths}")

    @property
    def is_sparse_coded(self) -> bool:
        """TopK-family SAEs are trained on sparse codes (k active latents), never dense ones."""
        return self.activation in ("topk", "batchtopk")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["matryoshka_widths"] = list(self.matryoshka_widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SAEConfigError(f"unknown SAE config fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        values["matryoshka_widths"] = tuple(values.get("matryoshka_widths", ()))
        try:
            return cls(**values)
        except TypeError as error:
            raise SAEConfigError(f"bad SAE config: {error}") from error
