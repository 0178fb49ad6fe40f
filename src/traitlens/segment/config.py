"""``SegmentConfig``: everything ``traitlens segment`` needs, checked when made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from traitlens.backbones.preprocess import FITS, Fit
from traitlens.checks import check_float, check_int
from traitlens.errors import TraitlensError
from traitlens.segment.refine import REFINEMENTS, Refinement

SEGMENT_FITS: tuple[str, ...] = tuple(fit for fit in FITS if fit != "crop")
Match = Literal["all", "class"]
MATCHES: tuple[str, ...] = get_args(Match)
DEFAULT_MODEL = "traitlens:specimens-vit"


class SegmentError(TraitlensError):
    """A segmentation request that cannot be carried out (options, folders, backends)."""


@dataclass(frozen=True)
class SegmentConfig:
    """One ``traitlens segment`` job.

    ``support_images``/``support_masks`` pair up in order; ``support_data`` adds the first
    ``n_support`` annotated images of each class of a segmentation folder. ``match="class"``
    segments each image of class C from the support images of class C only (a pseudo-video per
    species, as Static Segmentation by Tracking does); ``"all"`` uses every support image for every
    image. The feature backend's numbers: ``n_neighbours`` memory patches vote for each patch,
    weighted by softmax(cosine / ``temperature``); ``memory`` is how many of the images segmented
    last join the support in the memory; ``refine`` and ``radius``/``eps`` take the patch scores
    to pixels (see :mod:`traitlens.segment.refine`; ``radius`` in image pixels, by default half a
    patch's side).
    """

    data: Path
    out: Path
    support_images: tuple[Path, ...] = ()
    support_masks: tuple[Path, ...] = ()
    support_data: Path | None = None
    n_support: int = 1
    names: Path | None = None
    backend: str = "features"
    model: str = DEFAULT_MODEL
    weights: Path | None = None
    pretrained: bool = True
    layer: str | None = None
    n_neighbours: int = 10
    temperature: float = 0.05
    memory: int = 0
    colour_scale: float = 1.0
    contrast_scale: float = 0.1
    place_scale: float = 0.5
    refine: Refinement = "guided"
    radius: int | None = None
    fit: Fit = "squash"
    eps: float = 0.001
    match: Match = "all"
    sam2_checkpoint: Path | None = None
    sam2_config: str | None = None
    sam2_image_size: int | None = None
    batch_size: int = 32
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("n_support", "n_neighbours", "batch_size"):
            check_int(getattr(self, name), f"--{name.replace('_', '-')}", SegmentError)
        if self.sam2_image_size is not None and (isinstance(self.sam2_image_size, bool) or not isinstance(self.sam2_image_size, int)
                                                 or self.sam2_image_size < 32 or self.sam2_image_size % 32):
            raise SegmentError(f"--sam2-image-size must be a multiple of 32 of at least 32, got {self.sam2_image_size!r}")
        if self.radius is not None:
            check_int(self.radius, "--radius", SegmentError)
        if self.fit not in SEGMENT_FITS:  # a crop would leave the image's edges without labels
            raise SegmentError(f"fit must be one of {', '.join(SEGMENT_FITS)}, got {self.fit!r}")
        check_int(self.memory, "--memory", SegmentError, minimum=0)
        # below these the softmax and the filter's 3x3 solve break down (NaN, singular windows)
        check_float(self.temperature, "--temperature", SegmentError, minimum=1e-4)
        check_float(self.eps, "--eps", SegmentError, minimum=1e-8)
        for name in ("colour_scale", "contrast_scale", "place_scale"):
            check_float(getattr(self, name), name, SegmentError, minimum=1e-3)
        if self.refine not in REFINEMENTS:
            raise SegmentError(f"refine must be one of {', '.join(REFINEMENTS)}, got {self.refine!r}")
        if self.match not in MATCHES:
            raise SegmentError(f"match must be one of {', '.join(MATCHES)}, got {self.match!r}")

    def to_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else
                [str(item) for item in value] if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}
