"""Per-patch class labels from a pixel label map, by majority vote within each grid cell."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from traitlens.errors import DataError


def patch_labels(
    labels_hw: np.ndarray, grid_hw: tuple[int, int], n_classes: int
) -> npt.NDArray[np.int32]:
    """The most frequent label in each cell of a ``grid_hw`` grid over ``labels_hw``.

    Pixel row ``y`` of an ``H``-row map falls in grid row ``floor(y * grid_h / H)`` (columns
    alike), so sizes need not divide evenly. Ties go to the smallest label.

    Args:
        labels_hw: (h, w) integer label map with values in ``[0, n_classes)``.
        grid_hw: (grid_h, grid_w) patch grid, each at most the map's size along that axis.
        n_classes: number of labels.

    Returns:
        (grid_h * grid_w,) int32 labels, row-major.
    """
    if labels_hw.ndim != 2 or not np.issubdtype(labels_hw.dtype, np.integer):
        raise ValueError(
            f"expected an (h, w) integer label map, got {labels_hw.dtype} {labels_hw.shape}"
        )
    height, width = labels_hw.shape
    grid_h, grid_w = grid_hw
    if not (0 < grid_h <= height and 0 < grid_w <= width):
        raise ValueError(
            f"grid {grid_hw} must be non-empty and fit in a {height}x{width} label map"
        )
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    labels = labels_hw.astype(np.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise DataError(
            f"label map holds values {low}..{high} but n_classes is {n_classes}; "
            f"expected values in 0..{n_classes - 1}"
        )
    cell_rows = np.arange(height) * grid_h // height
    cell_cols = np.arange(width) * grid_w // width
    cell_hw = cell_rows[:, None] * grid_w + cell_cols[None, :]
    n_cells = grid_h * grid_w
    counts = np.bincount(
        (cell_hw * n_classes + labels).ravel(), minlength=n_cells * n_classes
    ).reshape(n_cells, n_classes)
    # argmax returns the first maximum, which is the smallest label among tied ones.
    return counts.argmax(axis=1).astype(np.int32)
