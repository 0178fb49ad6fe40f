"""Localization: how much of a heatmap falls on the mask of the trait that matters."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from traitlens.errors import DataError
from traitlens.output_folder import check_output_folder
from traitlens.specimens.average_precision import ArrayOrTensor
from traitlens.specimens.benchmark import Benchmark, ScoringError, read_benchmark
from traitlens.specimens.checks import check_int
from traitlens.specimens.tables import markdown_table, write_text
from traitlens.store.atomic import atomic_write_json

_HEATMAP_BATCH = 256


def _check_maps(heatmaps_nhw: ArrayOrTensor, masks_nhw: ArrayOrTensor) -> tuple[torch.Tensor, torch.Tensor]:
    heat = torch.as_tensor(heatmaps_nhw).to(torch.float64)
    masks = torch.as_tensor(masks_nhw, device=heat.device)
    if heat.ndim != 3 or heat.shape != masks.shape:
        raise ScoringError(f"heatmaps and masks must both be (n, H, W), got {tuple(heat.shape)} and {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise ScoringError(f"masks must be boolean, got {masks.dtype}")
    if not bool(torch.isfinite(heat).all()) or bool((heat < 0).any()):
        raise ScoringError("heatmaps must be finite and non-negative")
    return heat, masks


def mass_inside(heatmaps_nhw: ArrayOrTensor, masks_nhw: ArrayOrTensor) -> torch.Tensor:
    """Per image (n,) float64: heatmap mass inside the mask over total mass; 0 for a blank heatmap."""
    heat, masks = _check_maps(heatmaps_nhw, masks_nhw)
    total_n = heat.sum((1, 2))
    inside_n = (heat * masks).sum((1, 2))
    return torch.where(total_n > 0, inside_n / total_n.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _dilate(masks_nhw: torch.Tensor, radius: int) -> torch.Tensor:
    """Masks grown by a disk of ``radius`` pixels (Euclidean)."""
    if radius == 0:
        return masks_nhw
    if radius >= math.hypot(*masks_nhw.shape[1:]):
        # a disk as wide as the diagonal reaches every pixel from any mask pixel; drawing a larger
        # one would only cost time and memory
        return masks_nhw.flatten(1).any(1)[:, None, None].expand_as(masks_nhw)
    offsets = torch.arange(-radius, radius + 1, device=masks_nhw.device)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).to(torch.float32)
    grown = torch.nn.functional.conv2d(masks_nhw[:, None].to(torch.float32), disk[None, None], padding=radius)
    return grown[:, 0] > 0


def pointing_hits(heatmaps_nhw: ArrayOrTensor, masks_nhw: ArrayOrTensor, tolerance: int = 0) -> torch.Tensor:
    """Per image (n,) bool: whether the heatmap's maximum lies within ``tolerance`` pixels
    (Euclidean; 0 = on the mask itself) of a mask pixel. Ties at the maximum go to the first pixel
    in row-major order; a blank heatmap points nowhere and never hits."""
    check_int(tolerance, "the pointing tolerance (--tolerance)", ScoringError, minimum=0)
    heat, masks = _check_maps(heatmaps_nhw, masks_nhw)
    peak_n = heat.flatten(1).argmax(1)
    hit_n = _dilate(masks, tolerance).flatten(1).gather(1, peak_n[:, None])[:, 0]
    return hit_n & (heat.flatten(1).amax(1) > 0)


@dataclass(frozen=True)
class _ImageLocalization:
    """Per-image localization results, concatenable across batches."""

    has_mask_n: torch.Tensor
    mass_n: torch.Tensor
    hit_n: torch.Tensor
    mask_fraction_n: torch.Tensor

    @classmethod
    def of(cls, heatmaps_nhw: ArrayOrTensor, masks_nhw: ArrayOrTensor, tolerance: int) -> _ImageLocalization:
        heat, masks = _check_maps(heatmaps_nhw, masks_nhw)
        return cls(masks.flatten(1).any(1), mass_inside(heat, masks), pointing_hits(heat, masks, tolerance),
                   masks.flatten(1).to(torch.float64).mean(1))

    def columns(self) -> list[torch.Tensor]:
        return [getattr(self, field.name) for field in fields(self)]

    @classmethod
    def concat(cls, parts: Sequence[_ImageLocalization]) -> _ImageLocalization:
        return cls(*(torch.cat(values) for values in zip(*(part.columns() for part in parts), strict=True)))

    def select(self, keep_n: torch.Tensor) -> _ImageLocalization:
        return _ImageLocalization(*(values[keep_n] for values in self.columns()))

    def summary(self) -> dict[str, Any]:
        kept = self.has_mask_n
        n_images = int(kept.sum())

        def mean(values_n: torch.Tensor) -> float | None:
            return float(values_n[kept].to(torch.float64).mean()) if n_images else None

        return {"n_images": n_images, "n_empty_masks": int((~kept).sum()), "mass_inside": mean(self.mass_n),
                "pointing_game": mean(self.hit_n), "chance": mean(self.mask_fraction_n)}


def localization_scores(heatmaps_nhw: ArrayOrTensor, masks_nhw: ArrayOrTensor, tolerance: int = 0) -> dict[str, Any]:
    """Localization of non-negative heatmaps (n, H, W) against boolean masks (n, H, W).

    Images with an empty mask are left out of every mean and counted in ``n_empty_masks``.
    ``mass_inside``: mean fraction of heatmap mass inside the mask. ``pointing_game``: the rate at
    which the maximum falls within ``tolerance`` pixels of the mask (see :func:`pointing_hits`).
    ``chance``: the mean mask area fraction, what a uniform heatmap scores on mass, and a uniformly
    random point on the pointing game at tolerance 0. Means are None when no mask is non-empty.
    """
    return _ImageLocalization.of(heatmaps_nhw, masks_nhw, tolerance).summary()



def _heatmap_files(folder: Path, benchmark: Benchmark) -> Iterator[tuple[str, Path | None]]:
    """Each benchmark image with a look-alike and its heatmap file: ``<species>/<stem>.npy``, else
    ``<stem>.npy`` when the stem names one benchmark image only; None when there is none."""
    stems = Counter(PurePosixPath(source).stem for source in benchmark.image_species)
    for source, species in benchmark.image_species.items():
        if not benchmark.distinguishing_traits(species):
            continue
        relative = PurePosixPath(source).relative_to("images").with_suffix(".npy")
        nested, flat = folder / relative, folder / relative.name
        if nested.is_file():
            yield source, nested
        elif flat.is_file():
            if stems[relative.stem] > 1:
                raise DataError(f"heatmap {flat} is ambiguous: several benchmark images are named {relative.stem}; "
                                "put heatmaps in <species>/ subfolders")
            yield source, flat
        else:
            yield source, None


def _read_heatmap(path: Path) -> np.ndarray:
    try:
        heatmap = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read heatmap {path}: {error}") from error
    if heatmap.ndim != 2:
        raise DataError(f"heatmap {path} must be (H, W), got shape {heatmap.shape}")
    return heatmap


def score_localization(heatmaps: Path, data: Path, out: Path, tolerance: int = 0) -> dict[str, Any]:
    """Localization of per-image heatmaps against the masks of the traits that tell each image's
    species from its look-alike(s); writes ``out/localization.json`` and ``out/localization.md``.

    Heatmaps are ``.npy`` (H, W) arrays at the image's resolution, non-negative, named
    ``<species>/<stem>.npy`` or ``<stem>.npy`` after their image. Only images whose species has a
    look-alike are scored; the mask is the union of the pixels of its distinguishing traits. One
    row per distinguishing trait (traits joined by ``+`` for a species in several pairs), and ``all``.
    """
    check_output_folder(out, ScoringError)
    check_int(tolerance, "the pointing tolerance (--tolerance)", ScoringError, minimum=0)
    benchmark = read_benchmark(data)
    keys: list[str] = []
    parts: list[_ImageLocalization] = []
    batch_heat: list[np.ndarray] = []
    batch_masks: list[np.ndarray] = []

    def flush() -> None:
        if batch_heat:
            parts.append(_ImageLocalization.of(np.stack(batch_heat), np.stack(batch_masks), tolerance))
            batch_heat.clear()
            batch_masks.clear()

    n_missing = 0
    for source, path in _heatmap_files(heatmaps, benchmark):
        if path is None:
            n_missing += 1
            continue
        heatmap = _read_heatmap(path)
        traits = benchmark.distinguishing_traits(benchmark.image_species[source])
        mask = benchmark.distinguishing_mask(source)
        if heatmap.shape != mask.shape:
            raise DataError(f"heatmap {path} is {heatmap.shape[0]}x{heatmap.shape[1]} but image {source} is {mask.shape[0]}x{mask.shape[1]}")
        if batch_heat and (len(batch_heat) == _HEATMAP_BATCH or batch_heat[0].shape != heatmap.shape):
            flush()
        batch_heat.append(heatmap)
        batch_masks.append(mask)
        keys.append(" + ".join(traits))
    flush()
    if not parts:
        raise DataError(f"no heatmaps in {heatmaps} for the look-alike images of {data} "
                        "(expected <species>/<stem>.npy or <stem>.npy files)")
    scores = _ImageLocalization.concat(parts)
    rows = []
    for key in [*sorted(set(keys)), "all"]:
        keep_n = torch.tensor([key in ("all", image_key) for image_key in keys])
        rows.append({"trait": key, **scores.select(keep_n).summary()})
    result = {"heatmaps": str(heatmaps), "data": str(data), "tolerance": tolerance, "n_missing_heatmaps": n_missing, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "localization.json", result)
    write_text(out / "localization.md", "\n".join([
        "# Localization", "",
        f"Heatmaps `{heatmaps}` against the masks of each image's distinguishing trait (pointing tolerance {tolerance} px; "
        f"{n_missing} look-alike images had no heatmap). `chance` is the mean mask area fraction.", "",
        markdown_table(rows, ["trait", "n_images", "n_empty_masks", "mass_inside", "pointing_game", "chance"]),
    ]))
    return result
