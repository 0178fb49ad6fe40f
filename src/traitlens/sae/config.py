"""Typed configuration of one sparse autoencoder (saved beside its weights as JSON).

Every field is checked on construction, so a config from Python, the command line or a saved
``config.json`` is either valid or one :class:`SAEConfigError` line; the numeric checks are shared
by the training configs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from traitlens.errors import TraitlensError
from traitlens.sae.architectures import ARCHITECTURES, Architecture

LEGACY_FIELDS = ("jumprelu_initial_threshold", "jumprelu_bandwidth")
"""Fields every config carried before architectures had their own: ignored where the architecture
has no such field."""
Normalization = Literal["none", "norm", "standardize"]
NORMALIZATIONS: tuple[Normalization, ...] = ("none", "norm", "standardize")
PRECISIONS = ("float32", "bfloat16")
"""What training runs an SAE's encoder and decoder products in; weights, optimizer state and losses
stay float32."""


class SAEConfigError(TraitlensError):
    """An SAE configuration is inconsistent or a saved config cannot be read."""


def is_int(value: Any) -> bool:
    """A JSON or Python integer (``True`` is not a count, ``3.0`` is not an integer)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, error: type[TraitlensError]) -> None:
    """Refuse ``value`` unless it is an integer of at least ``minimum`` (one ``error`` line)."""
    if not is_int(value) or value < minimum:
        raise error(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_number(name: str, value: Any, error: type[TraitlensError], *, positive: bool = False,
                 at_most: float | None = None) -> None:
    """Refuse ``value`` unless it is a finite number ≥ 0 (> 0 when ``positive``, ≤ ``at_most``)."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (positive and value == 0) or (at_most is not None and value > at_most):
        bounds = "above 0" if positive else "of at least 0"
        bounds += f" and at most {at_most:g}" if at_most is not None else ""
        raise error(f"{name} must be a finite number {bounds}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...], error: type[TraitlensError]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise error(f"unknown {name} {value!r}; choose from {', '.join(choices)}")


@dataclass(frozen=True)
class SAEConfig:
    """Architecture of a sparse autoencoder.

    ``activation`` names a registered architecture (:mod:`traitlens.sae.architectures`): how
    latents are made sparse, e.g. ``topk`` (the k largest per token), ``batchtopk``, ``relu`` (L1
    penalty), ``jumprelu`` (learned thresholds, L0 penalty) or ``matryoshka``.
    ``architecture_fields`` holds that architecture's own fields (defaults filled in, others
    refused). ``matryoshka_widths`` adds nested prefixes (Matryoshka SAE): each prefix of the
    latents is trained to reconstruct the input on its own; it combines with any architecture, and
    an architecture may give defaults. ``normalization`` scales inputs before encoding and undoes
    it on decode: ``norm`` scales tokens so their mean norm is sqrt(d_in), ``standardize`` uses
    per-dimension mean and std.
    """

    d_in: int
    width: int
    activation: str = "topk"
    k: int = 32
    matryoshka_widths: tuple[int, ...] = ()
    normalization: Normalization = "none"
    architecture_fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("SAE architecture", self.activation, tuple(ARCHITECTURES), SAEConfigError)
        check_choice("SAE normalization", self.normalization, NORMALIZATIONS, SAEConfigError)
        check_int("SAE d_in", self.d_in, 1, SAEConfigError)
        check_int("SAE width", self.width, 1, SAEConfigError)
        check_int("SAE k", self.k, 1, SAEConfigError)
        if self.is_sparse_coded and self.k > self.width:
            raise SAEConfigError(f"k must be between 1 and the width {self.width}, got {self.k}")
        own = self.architecture.config_fields
        given = self.architecture_fields
        if not isinstance(given, dict) or set(given) - set(own):
            unknown = sorted(set(given) - set(own)) if isinstance(given, dict) else given
            raise SAEConfigError(f"the {self.activation} architecture has no fields {unknown}; it has "
                                 f"{', '.join(own) or 'none of its own'}")
        object.__setattr__(self, "architecture_fields", dict(given))  # a copy: the caller's dict stays theirs
        problem = self.architecture.check(self.own_fields)
        if problem:
            raise SAEConfigError(problem)
        if not isinstance(self.matryoshka_widths, tuple):
            raise SAEConfigError(f"matryoshka widths must be a list of integers, got {self.matryoshka_widths!r}")
        widths = self.nested_widths
        if not all(is_int(width) for width in widths):
            raise SAEConfigError(f"matryoshka widths must be a list of integers, got {widths!r}")
        if widths and (list(widths) != sorted(set(widths)) or widths[0] < 1 or widths[-1] != self.width):
            raise SAEConfigError(f"matryoshka widths must increase strictly and end at the width {self.width}, got {widths}")

    # Defaults are not written into the fields, so ``dataclasses.replace`` (another width, another
    # architecture) derives them again; equality and hashing compare what the values mean.
    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.activation]

    @property
    def own_fields(self) -> dict[str, Any]:
        """The architecture's own fields, defaults filled in."""
        return self.architecture.config_fields | self.architecture_fields

    @property
    def nested_widths(self) -> tuple[int, ...]:
        """The Matryoshka prefixes trained: those given, else the architecture's defaults (none for most)."""
        return self.matryoshka_widths or self.architecture.default_matryoshka_widths(self.width)

    def _meaning(self) -> tuple[Any, ...]:
        return (self.d_in, self.width, self.activation, self.k, self.nested_widths, self.normalization,
                tuple(sorted(self.own_fields.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SAEConfig) and self._meaning() == other._meaning()

    def __hash__(self) -> int:
        return hash(self._meaning())

    @property
    def is_sparse_coded(self) -> bool:
        """TopK-family SAEs are trained on sparse codes (k active latents), never dense ones."""
        return self.architecture.sparse_coded

    def to_dict(self) -> dict[str, Any]:
        """The shared fields, then the architecture's own at the same level."""
        data = asdict(self)
        data["matryoshka_widths"] = list(self.nested_widths)
        del data["architecture_fields"]
        return data | self.own_fields

    @classmethod
    def from_dict(cls, data: Any) -> SAEConfig:
        """The config saved by :meth:`to_dict` (a JSON object); anything else is one line."""
        if not isinstance(data, dict):
            raise SAEConfigError(f"an SAE config must be a JSON object, got {type(data).__name__}")
        missing = sorted(name for name in ("d_in", "width") if name not in data)
        if missing:
            raise SAEConfigError(f"SAE config fields missing: {', '.join(missing)}")
        shared = {f.name for f in fields(cls)} - {"architecture_fields"}
        activation = data.get("activation", "topk")
        check_choice("SAE architecture", activation, tuple(ARCHITECTURES), SAEConfigError)
        own = ARCHITECTURES[activation].config_fields
        unknown = set(data) - shared - set(own) - set(LEGACY_FIELDS)
        if unknown:
            raise SAEConfigError(f"unknown SAE config fields: {', '.join(sorted(unknown))}")
        for name in set(LEGACY_FIELDS) & set(data) - set(own):  # unused, but a damaged value is still damage
            check_number(name, data[name], SAEConfigError, positive=True)
        return cls(**{key: value for key, value in data.items() if key in shared - {"matryoshka_widths"}},
                   matryoshka_widths=json_widths(data.get("matryoshka_widths", [])),
                   architecture_fields={key: value for key, value in data.items() if key in own})


def json_widths(value: Any) -> tuple[int, ...]:
    """Matryoshka widths as written in JSON (a list; null for none), for :class:`SAEConfig` to check."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SAEConfigError(f"matryoshka widths must be a list of integers, got {value!r}")
    return tuple(value)
