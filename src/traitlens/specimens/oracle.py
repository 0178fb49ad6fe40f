"""What a model really uses, measured with counterfactual twins (``specimens generate --twins``).

An image and its twin show the same organism in the same scene and differ only in the trait that
separates the image's species from its look-alike (the twin *is* the look-alike). So:

- **reliance** — how often replacing an image by its twin turns a correct prediction into the
  look-alike: how much the model depends on the trait at all;
- **oracle map** — per patch of the model's grid, the drop in ``y_species − y_look-alike`` when
  only that patch's pixels are replaced by the twin's: where the model reads the trait. It is the
  localization ground truth *for that model*, at its own resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from traitlens.specimens.benchmark import ScoringError

Forward = Callable[[torch.Tensor], torch.Tensor]
"""Preprocessed pixels (b, 3, H, W) -> class scores (b, classes)."""


def cell_bounds(length: int, cells: int) -> list[tuple[int, int]]:
    """Pixel ranges ``[start, stop)`` of ``cells`` equal cells along an axis of ``length`` pixels
    (the first pixel of cell i is ``floor(i * length / cells)``), covering every pixel once."""
    edges = [i * length // cells for i in range(cells + 1)]
    return list(pairwise(edges))


@torch.no_grad()
def oracle_maps(forward: Forward, pixels_bchw: torch.Tensor, twins_bchw: torch.Tensor, species_b: torch.Tensor,
                lookalike_b: torch.Tensor, grid_hw: tuple[int, int], batch_size: int = 64) -> torch.Tensor:
    """(b, gh, gw) float64: for each image and each cell of the ``grid_hw`` grid over its pixels,
    ``margin(image) − margin(image with that cell from the twin)``, where
    ``margin = y[species] − y[look-alike]``. Positive where the cell carries evidence for the
    species against its look-alike; 0 where the twin's pixels equal the image's."""
    if pixels_bchw.shape != twins_bchw.shape or pixels_bchw.ndim != 4:
        raise ScoringError(f"images and twins must have the same (b, c, h, w) shape, got {tuple(pixels_bchw.shape)} "
                           f"and {tuple(twins_bchw.shape)}")
    if batch_size < 1:
        raise ScoringError(f"batch_size must be at least 1, got {batch_size}")
    rows, cols = cell_bounds(pixels_bchw.shape[2], grid_hw[0]), cell_bounds(pixels_bchw.shape[3], grid_hw[1])
    n_cells = len(rows) * len(cols)
    maps = torch.zeros(len(pixels_bchw), n_cells, dtype=torch.float64)

    def margins(batch: torch.Tensor, species: torch.Tensor, lookalike: torch.Tensor) -> torch.Tensor:
        scores = forward(batch).to(torch.float64)
        return scores.gather(1, species[:, None])[:, 0] - scores.gather(1, lookalike[:, None])[:, 0]

    row_of_y = torch.cat([torch.full((r1 - r0,), r) for r, (r0, r1) in enumerate(rows)])
    col_of_x = torch.cat([torch.full((c1 - c0,), c) for c, (c0, c1) in enumerate(cols)])
    cell_hw = row_of_y[:, None] * len(cols) + col_of_x[None, :]
    clean = margins(pixels_bchw, species_b, lookalike_b)
    for image in range(len(pixels_bchw)):
        # only cells where the twin differs can move the margin; the others stay exactly 0
        cells = torch.unique(cell_hw[(pixels_bchw[image] != twins_bchw[image]).any(0).cpu()]).tolist()
        for start in range(0, len(cells), batch_size):
            chunk = cells[start:start + batch_size]
            batch = pixels_bchw[image].repeat(len(chunk), 1, 1, 1)
            for slot, cell in enumerate(chunk):
                (r0, r1), (c0, c1) = rows[cell // len(cols)], cols[cell % len(cols)]
                batch[slot, :, r0:r1, c0:c1] = twins_bchw[image, :, r0:r1, c0:c1]
            count = len(chunk)
            drop = clean[image] - margins(batch, species_b[image].repeat(count), lookalike_b[image].repeat(count))
            maps[image, chunk] = drop.to(maps)  # the model may run on a GPU; the maps stay on the CPU
    return maps.reshape(len(pixels_bchw), len(rows), len(cols))
