"""Which patches show a mask label: the one definition of a positive patch behind every patch-level
average precision traitlens reports (a latent's label AP in the feature report, trait discovery,
the trait latents that suppression zeroes), so the same latent and label give the same AP
wherever it is shown, on the same images.

A patch is positive for a label when at least ``min_coverage`` of its pixels (in the model's input
geometry) show it, or when it is the image's patch with the most of the label. The second rule
gives every image where a label is visible at least one positive patch, so small parts (an eye
ring a few pixels wide, which never fills a tenth of a patch, let alone wins a majority vote) are
still scored, on their best patch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from traitlens.backbones.preprocess import Preprocess
from traitlens.errors import DataError, TraitlensError

DEFAULT_MIN_COVERAGE = 0.1


def check_min_coverage(min_coverage: float, error: type[TraitlensError]) -> None:
    """Refuse (one ``error`` line) a share of a patch's pixels outside (0, 1]."""
    if isinstance(min_coverage, bool) or not isinstance(min_coverage, int | float) or not 0 < min_coverage <= 1:
        raise error(f"min_coverage must be a number in (0, 1], got {min_coverage!r}")


def describe_positives(min_coverage: float) -> str:
    """The definition as the reports print it."""
    return (f"a patch is positive for a label when at least {min_coverage:.0%} of its pixels show it, "
            "or when it is the image's patch with the most of it")


def patch_coverage(labels_hw: np.ndarray, grid_hw: tuple[int, int], n_labels: int) -> npt.NDArray[np.float64]:
    """Fraction of each patch's pixels holding each label, (grid_h * grid_w, n_labels), rows in
    row-major patch order as the store's patch tokens.

    Pixel row ``y`` of an ``H``-row map falls in patch row ``floor(y * grid_h / H)`` (columns
    alike), as in :func:`traitlens.data.patch_labels.patch_labels`.
    """
    if labels_hw.ndim != 2 or not np.issubdtype(labels_hw.dtype, np.integer):
        raise DataError(f"expected an (h, w) integer label map, got {labels_hw.dtype} {labels_hw.shape}")
    height, width = labels_hw.shape
    grid_h, grid_w = grid_hw
    if not (0 < grid_h <= height and 0 < grid_w <= width):
        raise DataError(f"a {grid_h}x{grid_w} patch grid does not fit a {height}x{width} label map")
    labels = labels_hw.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_labels:
        raise DataError(f"label map holds values {labels.min()}..{labels.max()}, expected 0..{n_labels - 1}")
    cell_hw = (np.arange(height) * grid_h // height)[:, None] * grid_w + (np.arange(width) * grid_w // width)[None, :]
    counts_pl = np.bincount((cell_hw * n_labels + labels).ravel(), minlength=grid_h * grid_w * n_labels)
    counts_pl = counts_pl.reshape(grid_h * grid_w, n_labels)
    return counts_pl / counts_pl.sum(1, keepdims=True)


def patch_positives(coverage_pl: np.ndarray, labels: Sequence[int], min_coverage: float) -> npt.NDArray[np.bool_]:
    """Which patches of one image count as showing each of ``labels``, (n_patches, len(labels)),
    by the rule of this module from the image's :func:`patch_coverage`."""
    coverage_pt = coverage_pl[:, list(labels)]
    largest_t = coverage_pt.max(0)
    return (coverage_pt >= min_coverage) | ((coverage_pt == largest_t) & (coverage_pt > 0))


def mask_geometry(preprocess: dict[str, Any] | None) -> Callable[[np.ndarray], np.ndarray]:
    """Label map -> the model's input geometry recorded in a store's manifest (``preprocess``), so
    masks line up with the patch grid. A store without preprocessing (made from arrays) saw images
    at their own size."""
    if preprocess is None:
        return lambda labels_hw: labels_hw
    return Preprocess.from_dict(preprocess).mask
