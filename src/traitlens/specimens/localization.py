"""Localization: how much of a heatmap falls on the mask of the trait that matters."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from traitlens.atomic import atomic_write_json
from traitlens.checks import check_int
from traitlens.errors import DataError
from traitlens.output_folder import check_output_folder
from traitlens.specimens.average_precision import ArrayOrTensor
from traitlens.specimens.benchmark import Benchmark, ScoringError, read_benchmark
from traitlens.specimens.patch_scores import pool_to_grid, score_patch_maps, trait_patches
from traitlens.specimens.reliance import read_oracle_map
from traitlens.tables import markdown_table, write_text

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


@dataclass
class _PatchInputs:
    """Per image, at the model's patch grid: the pooled heatmap, the trait patches and the oracle map."""

    grid_hw: tuple[int, int]
    oracle: Path | None
    maps: list[np.ndarray] = field(default_factory=list)
    patches: list[np.ndarray] = field(default_factory=list)
    oracle_maps: list[np.ndarray] = field(default_factory=list)

    def add(self, source: str, heatmap_hw: np.ndarray, mask_hw: np.ndarray) -> None:
        self.maps.append(pool_to_grid(heatmap_hw[None], self.grid_hw)[0].numpy())
        self.patches.append(trait_patches(mask_hw, self.grid_hw))
        if self.oracle is not None:
            self.oracle_maps.append(_oracle_map(self.oracle, source, self.grid_hw))

    @functools.cached_property
    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Maps, trait patches and oracle maps as (n, gh, gw) tensors, stacked once for every row."""
        oracle_ngg = torch.from_numpy(np.stack(self.oracle_maps)) if self.oracle_maps else None
        return torch.from_numpy(np.stack(self.maps)), torch.from_numpy(np.stack(self.patches)), oracle_ngg

    def summary(self, keep_n: torch.Tensor) -> dict[str, Any]:
        maps_ngg, patches_ngg, oracle_ngg = self.stacked
        positives_ngg = patches_ngg[keep_n]
        if not bool(positives_ngg.any()):
            return dict.fromkeys(PATCH_COLUMNS)
        patch = score_patch_maps(maps_ngg[keep_n], positives_ngg, None if oracle_ngg is None else oracle_ngg[keep_n],
                                 tolerance=1)
        return {"patch_mass": patch.mass_inside, "patch_ap": patch.patch_ap, "patch_pointing": patch.pointing_game,
                "patch_chance": patch.chance_mass, "patch_pointing_chance": patch.chance_pointing,
                "oracle_spearman": patch.rank_correlation}


PATCH_COLUMNS = ["patch_mass", "patch_ap", "patch_pointing", "patch_chance", "patch_pointing_chance", "oracle_spearman"]


def _oracle_map(folder: Path, source: str, grid_hw: tuple[int, int]) -> np.ndarray:
    oracle_gg = read_oracle_map(folder, source)
    if oracle_gg.shape != grid_hw:
        raise ScoringError(f"the oracle map of {source} is {oracle_gg.shape[0]}x{oracle_gg.shape[1]}, "
                           f"not the --grid {grid_hw[0]}x{grid_hw[1]}")
    return oracle_gg.astype(np.float64)


def _oracle_grid(folder: Path, benchmark: Benchmark) -> tuple[int, int]:
    """The grid of the first oracle map in a ``score reliance`` folder."""
    source = next((source for source, species in benchmark.image_species.items() if benchmark.distinguishing_traits(species)),
                  None)
    if source is None:
        raise ScoringError(f"{folder}: the benchmark has no look-alike images to read oracle maps for")
    shape = read_oracle_map(folder, source).shape
    return int(shape[0]), int(shape[1])


@dataclass(frozen=True)
class LocalizationConfig:
    """``specimens score localization``: the heatmaps folder of ``traitlens explain``, the
    benchmark ``data`` and the folder ``out``; the options as :func:`score_localization` says."""

    heatmaps: Path
    data: Path
    out: Path
    tolerance: int = 0
    grid_hw: tuple[int, int] | None = None
    oracle: Path | None = None


def score_localization(config: LocalizationConfig) -> dict[str, Any]:
    """Localization of per-image heatmaps against the masks of the traits that tell each image's
    species from its look-alike(s); writes ``out/localization.json`` and ``out/localization.md``.

    Heatmaps are ``.npy`` (H, W) arrays at the image's resolution, non-negative, named
    ``<species>/<stem>.npy`` or ``<stem>.npy`` after their image. Only images whose species has a
    look-alike are scored; the mask is the union of the pixels of its distinguishing traits. One
    row per distinguishing trait (traits joined by ``+`` for a species in several pairs), and ``all``.

    With ``grid_hw`` (the model's patch grid, for a model that sees the whole image) the maps are
    also scored per patch (:mod:`traitlens.specimens.patch_scores`, pointing within one patch);
    with ``oracle`` (a ``score reliance`` folder; its maps give the grid when ``grid_hw`` is None)
    also by rank correlation with the oracle map. ``out`` is written into, not claimed
    (:func:`traitlens.specimens.benchmark.claim_score_folder`).
    """
    heatmaps, data, out, tolerance, grid_hw, oracle = (config.heatmaps, config.data, config.out, config.tolerance,
                                                       config.grid_hw, config.oracle)
    check_output_folder(out, ScoringError)
    check_int(tolerance, "the pointing tolerance (--tolerance)", ScoringError, minimum=0)
    benchmark = read_benchmark(data)
    if oracle is not None and grid_hw is None:
        grid_hw = _oracle_grid(oracle, benchmark)
    if grid_hw is not None:
        for side in grid_hw:
            check_int(side, "each side of the patch grid (--grid)", ScoringError)
    patch_inputs = None if grid_hw is None else _PatchInputs(grid_hw, oracle)
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
            raise DataError(f"heatmap {path} is {heatmap.shape[0]}x{heatmap.shape[1]} "
                            f"but image {source} is {mask.shape[0]}x{mask.shape[1]}")
        if batch_heat and (len(batch_heat) == _HEATMAP_BATCH or batch_heat[0].shape != heatmap.shape):
            flush()
        batch_heat.append(heatmap)
        batch_masks.append(mask)
        keys.append(" + ".join(traits))
        if patch_inputs is not None:
            patch_inputs.add(source, heatmap, mask)
    flush()
    if not parts:
        raise DataError(f"no heatmaps in {heatmaps} for the look-alike images of {data} "
                        "(expected <species>/<stem>.npy or <stem>.npy files)")
    scores = _ImageLocalization.concat(parts)
    rows = []
    for key in [*sorted(set(keys)), "all"]:
        keep_n = torch.tensor([key in ("all", image_key) for image_key in keys])
        patch = {} if patch_inputs is None else patch_inputs.summary(keep_n)
        rows.append({"trait": key, **scores.select(keep_n).summary(), **patch})
    result = {"heatmaps": str(heatmaps), "data": str(data), "tolerance": tolerance, "n_missing_heatmaps": n_missing,
              "grid_hw": None if grid_hw is None else list(grid_hw), "oracle": None if oracle is None else str(oracle),
              "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "localization.json", result)
    columns = ["trait", "n_images", "n_empty_masks", "mass_inside", "pointing_game", "chance"]
    about_patches = ""
    if grid_hw is not None:
        columns += PATCH_COLUMNS if oracle is not None else PATCH_COLUMNS[:-1]
        about_patches = (f" Patch columns score the map pooled to the {grid_hw[0]}x{grid_hw[1]} grid against the trait's patches "
                         "(pointing within one patch; `patch_chance` is the trait patches' share, `patch_pointing_chance` "
                         "what a random patch would hit)" + (", `oracle_spearman` the rank correlation with the oracle map."
                                                            if oracle is not None else "."))
    write_text(out / "localization.md", "\n".join([
        "# Localization", "",
        f"Heatmaps `{heatmaps}` against the masks of each image's distinguishing trait (pointing tolerance {tolerance} px; "
        f"{n_missing} look-alike images had no heatmap). `chance` is the mean mask area fraction.{about_patches}", "",
        markdown_table(rows, columns),
    ]))
    return result
