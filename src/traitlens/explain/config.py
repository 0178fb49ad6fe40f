"""What ``traitlens explain`` does, as one frozen config, and the errors its input can cause."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from traitlens.backbones.preprocess import FITS, Fit
from traitlens.errors import TraitlensError

DEFAULT_GAMMA = 0.6
DEFAULT_N_REFS = 3

ClassKey = str | int
"""A class by name, or by index into the head's output (as text on the command line)."""


class ExplainError(TraitlensError):
    """A heatmap request that cannot be met: unknown method or class, bad gamma, no usable head."""


@dataclass(frozen=True)
class ExplainConfig:
    """Heatmaps of one method for every image of a source.

    ``target`` is the explained class (default: each image's predicted class). ``refs`` turns the
    method into its Finer-CAM variant: the target score becomes
    ``y_target - gamma * mean(y_ref for ref in refs)``, with ``"auto"`` taking each image's
    ``n_refs`` highest-scoring other classes (default :data:`DEFAULT_N_REFS`, or all other classes
    when the head has fewer), or the given classes; ``None`` explains the target alone. ``layer``
    defaults to :func:`traitlens.explain.maps.default_layer`. ``head`` is a head directory (a
    linear probe, zero-shot prompts, ...) whose classes replace the model's own. ``fit`` is how
    each image meets the model's input (:data:`traitlens.backbones.preprocess.Fit`): by default
    the whole image is squashed into it, so the map covers the whole image. ``overwrite`` replaces
    an earlier explain output in ``out`` (never another folder); without it, the same job's
    unfinished output there is resumed and its finished output kept.
    """

    model: str
    data: Path
    method: str
    out: Path
    weights: Path | None = None
    pretrained: bool = True
    head: Path | None = None
    target: ClassKey | None = None
    refs: tuple[ClassKey, ...] | Literal["auto"] | None = None
    gamma: float = DEFAULT_GAMMA
    n_refs: int | None = None
    layer: str | int | None = None
    batch_size: int = 8
    device: str = "auto"
    zero_shot: tuple[str, ...] | None = None
    """CLIP-style models: explain these class names, each prompted through ``template``."""
    template: str = "a photo of a {}."
    concept: str | None = None
    """CLIP-style models: explain this text concept (the target); with ``reference``, the concept
    against that prompt (Finer-CAM with the reference as the one reference class)."""
    reference: str | None = None
    fit: Fit = "squash"
    rank_traits: int | None = None
    """Class-query heads (``prompt-cam``, ``intr``): rank the attention heads per image by greedy
    head blurring and keep this many, each with its map (Prompt-CAM's traits)."""
    overwrite: bool = False

    def __post_init__(self) -> None:
        from traitlens.explain.methods import method_by_name

        method = method_by_name(self.method)
        check_contrast(self.gamma, self.n_refs)
        if self.explained_refs is not None and not method.uses_classes:
            raise ExplainError(f"{method.name} does not depend on the class, so reference classes do not apply")
        if self.rank_traits is not None and (method.evidence != "class_attention" or self.rank_traits < 1):
            raise ExplainError("--rank-traits needs a class-query method (prompt-cam or intr) and a count of at least 1")
        if self.batch_size < 1:
            raise ExplainError(f"batch size must be at least 1, got {self.batch_size}")
        if isinstance(self.refs, tuple) and not self.refs:
            raise ExplainError("an explicit list of reference classes must name at least one class")
        if self.n_refs is not None and self.refs != "auto":
            raise ExplainError("a number of reference classes applies only to automatic references (refs 'auto')")
        if self.fit not in FITS:
            raise ExplainError(f"unknown fit {self.fit!r}; choose one of {', '.join(FITS)}")
        heads = [name for name, value in (("a head directory", self.head), ("zero-shot classes", self.zero_shot),
                                          ("a text concept", self.concept)) if value is not None]
        if len(heads) > 1:
            raise ExplainError(f"choose one head: got {' and '.join(heads)}")
        if self.reference is not None and self.concept is None:
            raise ExplainError("a reference prompt needs a concept prompt to compare with")
        if self.concept is not None and (self.target is not None or self.refs is not None):
            raise ExplainError("with a text concept the concept is the target and the reference prompt the reference; "
                               "drop --target and --refs")

    @property
    def explained_target(self) -> ClassKey | None:
        """The target class: a text concept is class 0 of its head."""
        return 0 if self.concept is not None else self.target

    @property
    def explained_refs(self) -> tuple[ClassKey, ...] | Literal["auto"] | None:
        """The references: a text concept's reference prompt is class 1 of its head."""
        if self.concept is not None:
            return (1,) if self.reference is not None else None
        return self.refs

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": str(self.data), "method": self.method, "out": str(self.out),
            "weights": None if self.weights is None else str(self.weights), "pretrained": self.pretrained,
            "head": None if self.head is None else str(self.head), "target": self.target,
            "refs": list(self.refs) if isinstance(self.refs, tuple) else self.refs, "gamma": self.gamma,
            "n_refs": self.n_refs, "layer": self.layer, "batch_size": self.batch_size, "device": self.device,
            "zero_shot": None if self.zero_shot is None else list(self.zero_shot), "template": self.template,
            "concept": self.concept, "reference": self.reference, "fit": self.fit,
            **({"rank_traits": self.rank_traits} if self.rank_traits is not None else {}),
        }


def check_contrast(gamma: float, n_refs: int | None) -> None:
    """Refuse a negative or non-finite gamma (it would add the references' evidence) and n_refs < 1."""
    if not gamma >= 0 or gamma == float("inf"):
        raise ExplainError(f"gamma must be a finite number >= 0 (0 gives the base method), got {gamma}")
    if n_refs is not None and n_refs < 1:
        raise ExplainError(f"the number of reference classes must be at least 1, got {n_refs}")
