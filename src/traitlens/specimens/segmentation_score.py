"""``specimens score segmentation``: label maps against the benchmark's, IoU per label.

Two ways in. ``--pred DIR`` scores a ``traitlens segment`` folder as it is. With ``--model`` (and
``--support-data``) the command segments the benchmark itself, in memory, for every model, layer
and number of labelled images per species asked for: each species from its own first N labelled
specimens of the support benchmark (``--match class``, a pseudo-video per species, as Static
Segmentation by Tracking runs it), the table docs/results.md shows.

IoU of a label is accumulated over the images (intersection over union of all its pixels), the
usual semantic-segmentation measure. A trait counts towards the headline mean when its mean area,
over the images that show it, is at least ``min_patches`` patches of the model's grid: a trait
smaller than two patches is below what patch features can resolve, and is reported but not in
the mean.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from traitlens.atomic import atomic_write_json
from traitlens.data.images import decode_image, decode_label_map
from traitlens.data.segmentation import read_names
from traitlens.errors import DataError
from traitlens.output_folder import check_output_folder
from traitlens.specimens.benchmark import Benchmark, ScoringError, read_benchmark

if TYPE_CHECKING:
    from traitlens.segment.backends.features import FeatureBackend
    from traitlens.segment.support import Support
from traitlens.tables import markdown_table, write_text

MIN_PATCHES = 2.0
IOU_GOAL = 0.6


@dataclass
class LabelCounts:
    """Pixel counts per benchmark label, summed over images."""

    n_labels: int
    intersection: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    truth_area: np.ndarray = field(init=False)
    truth_images: np.ndarray = field(init=False)
    patch_area: float = 0.0
    n_images: int = 0

    def __post_init__(self) -> None:
        self.intersection, self.union, self.truth_area, self.truth_images = (np.zeros(self.n_labels, np.int64) for _ in range(4))

    def add(self, pred_hw: np.ndarray, truth_hw: np.ndarray, grid_hw: tuple[int, int] | None) -> None:
        if pred_hw.shape != truth_hw.shape:
            raise ScoringError(f"a predicted label map is {pred_hw.shape} but the benchmark's is {truth_hw.shape}")
        n = self.n_labels
        confusion = np.bincount(pred_hw.astype(np.int64).ravel() * n + truth_hw.astype(np.int64).ravel(),
                                minlength=n * n).reshape(n, n)
        predicted, truth = confusion.sum(1), confusion.sum(0)
        self.intersection += np.diag(confusion)
        self.union += predicted + truth - np.diag(confusion)
        self.truth_area += truth
        self.truth_images += truth > 0
        if grid_hw is not None:
            self.patch_area += truth_hw.size / (grid_hw[0] * grid_hw[1])
        self.n_images += 1

    def rows(self, names: Sequence[str], first_trait: int) -> list[dict[str, Any]]:
        patch_area = self.patch_area / self.n_images if self.patch_area else None
        rows = []
        for label, name in enumerate(names):
            shown = self.truth_images[label]
            mean_area = self.truth_area[label] / shown if shown else 0.0
            rows.append({"label": name, "trait": label >= first_trait, "n_images": int(shown),
                         "mean_area_patches": None if patch_area is None else float(mean_area / patch_area),
                         "iou": float(self.intersection[label] / self.union[label]) if self.union[label] else None})
        return rows


def summary(rows: list[dict[str, Any]], min_patches: float) -> dict[str, Any]:
    """Mean IoU over all traits, and over those at least ``min_patches`` large (the goal's)."""
    traits = [row for row in rows if row["trait"] and row["iou"] is not None]
    large = [row for row in traits if row["mean_area_patches"] is not None and row["mean_area_patches"] >= min_patches]
    return {"mean_iou_traits": float(np.mean([row["iou"] for row in traits])) if traits else None,
            "mean_iou_large_traits": float(np.mean([row["iou"] for row in large])) if large else None,
            "large_traits": [row["label"] for row in large]}


def benchmark_names(benchmark: Benchmark) -> list[str]:
    names = read_names(benchmark.root)
    if names is None:
        names = ["background", "body"] + [""] * (max(benchmark.trait_labels.values()) - 1)
        for trait, label in benchmark.trait_labels.items():
            names[label] = trait
    return names


def _label_table(pred_names: Sequence[str], names: Sequence[str], where: str) -> np.ndarray:
    """Predicted label id -> benchmark label id, by name."""
    unknown = [name for name in pred_names if name not in names]
    if unknown:
        raise ScoringError(f"{where} names label(s) {', '.join(map(repr, unknown[:5]))} that the benchmark does not have "
                           f"(it has {', '.join(names)})")
    return np.array([list(names).index(name) for name in pred_names] + [0] * (256 - len(pred_names)), dtype=np.int64)


def _resolve(benchmark: Benchmark, source: str) -> str | None:
    path = PurePosixPath(source)
    try:
        return benchmark.resolve(str(path.relative_to("images") if path.parts[:1] == ("images",) else path))
    except DataError:
        return None


@dataclass(frozen=True)
class SegmentationScoreConfig:
    """``specimens score segmentation``: ``pred`` (a segment folder) or a sweep of ``models``."""

    data: Path
    out: Path
    pred: Path | None = None
    models: tuple[str, ...] = ()
    support_data: Path | None = None
    layers: tuple[str, ...] = ()
    """Layers of each model swept; empty: the backend's default layer only. ``all``: every layer."""
    n_support: tuple[int, ...] = (1, 2, 5)
    max_images: int | None = None
    min_patches: float = MIN_PATCHES
    weights: Path | None = None
    pretrained: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if (self.pred is None) == (not self.models):
            raise ScoringError("give either --pred DIR (a traitlens segment folder) or --model SPEC with --support-data DIR")
        if self.models and self.support_data is None:
            raise ScoringError("--model needs --support-data DIR: the labelled benchmark each species' support comes from")
        if self.pred is not None and (self.support_data is not None or self.layers or self.max_images is not None):
            raise ScoringError("--support-data, --layers and --max-images go with --model, not with --pred")


def check_inputs(config: SegmentationScoreConfig) -> None:
    """Read and match every input that is not a model (the benchmark, the predictions or the
    support), so a bad one is refused before ``--out`` is claimed."""
    from traitlens.segment.result import read_segmentation
    from traitlens.segment.support import read_support

    benchmark = read_benchmark(config.data)
    names = benchmark_names(benchmark)
    if config.pred is not None:
        _label_table(read_segmentation(config.pred).names, names, f"{config.pred}")
    elif config.support_data is not None:
        if config.support_data.resolve() == config.data.resolve():
            raise ScoringError("--support-data is the benchmark being scored; its labelled specimens must come from another "
                               "seed, or the support images would be scored too")
        support = read_support([], [], config.support_data, 1, None)
        _label_table(support.names, names, f"--support-data {config.support_data}")
        missing = sorted(set(benchmark.image_species.values()) - support.classes)
        if missing:
            raise ScoringError(f"--support-data {config.support_data} has no labelled image of species {', '.join(missing[:5])}")


def score_predictions(config: SegmentationScoreConfig) -> dict[str, Any]:
    """IoU of a ``traitlens segment`` folder against the benchmark (support images left out)."""
    from traitlens.segment.result import read_segmentation

    assert config.pred is not None
    benchmark = read_benchmark(config.data)
    predicted = read_segmentation(config.pred)
    names = benchmark_names(benchmark)
    to_benchmark = _label_table(predicted.names, names, f"{config.pred}")
    counts = LabelCounts(len(names))
    n_support_images = 0
    for image in predicted.images:
        source = _resolve(benchmark, image.source)
        if source is None:
            raise ScoringError(f"{config.pred}: image {image.source} is not an image of the benchmark {config.data}")
        if image.support:  # its mask is the one it was labelled with: nothing to score
            n_support_images += 1
            continue
        labels_hw = decode_label_map(config.pred / image.annotation, image.annotation)
        if labels_hw.max() >= len(predicted.names):
            raise ScoringError(f"{config.pred / image.annotation} has label {int(labels_hw.max())}, but "
                               f"{config.pred} names only labels 0 to {len(predicted.names) - 1}")
        pred_hw = to_benchmark[labels_hw]
        counts.add(pred_hw, benchmark.annotation(source), predicted.grid_hw)
    if counts.n_images == 0:
        raise ScoringError(f"{config.pred} holds no segmented image besides its support images")
    rows = counts.rows(names, 2)
    return {"pred": str(config.pred), "data": str(config.data), "n_images": counts.n_images,
            "n_support_images_left_out": n_support_images, "min_patches": config.min_patches, "labels": rows,
            **summary(rows, config.min_patches)}


def _species_groups(benchmark: Benchmark, max_images: int | None) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for source, species in sorted(benchmark.image_species.items()):
        groups.setdefault(species, []).append(source)
    if max_images is not None:
        per_species = max(1, max_images // max(1, len(groups)))
        groups = {species: sources[:per_species] for species, sources in groups.items()}
    return groups


def _sweep_settings(config: SegmentationScoreConfig, layer_names: Sequence[str]) -> Iterator[tuple[str | None, int]]:
    """(layer, support size) of every run on a model with these layers; layer None is the default."""
    if not config.layers:
        layers: list[str | None] = [None]
    elif config.layers == ("all",):
        layers = list(layer_names)
    else:
        layers = list(config.layers)
    for layer in layers:
        for n_support in config.n_support:
            yield layer, n_support


@dataclass(frozen=True)
class SpeciesImages:
    """Benchmark images by species, decoded once for every run, with their label maps."""

    groups: dict[str, list[str]]
    images: dict[str, Image.Image]
    truths: dict[str, np.ndarray]

    @classmethod
    def read(cls, benchmark: Benchmark, max_images: int | None) -> SpeciesImages:
        groups = _species_groups(benchmark, max_images)
        sources = [source for group in groups.values() for source in group]
        return cls(groups, {source: decode_image(benchmark.root / source, source) for source in sources},
                   {source: benchmark.annotation(source) for source in sources})


def count_per_species(backend: FeatureBackend, species_images: SpeciesImages, support: Support, n_support: int,
                      to_benchmark: np.ndarray, n_labels: int) -> tuple[LabelCounts, float]:
    """Segment each species from its first ``n_support`` support images (a pseudo-video each) and
    count pixels against the benchmark; also the seconds it took."""
    counts = LabelCounts(n_labels)
    started = time.perf_counter()
    for species, sources in species_images.groups.items():
        backend.start(support.of_class(species)[:n_support])
        batch_size = backend.config.batch_size
        for start in range(0, len(sources), batch_size):
            batch = sources[start:start + batch_size]
            results = backend.segment([species_images.images[source] for source in batch])
            for source, result in zip(batch, results, strict=True):
                counts.add(to_benchmark[result.labels_hw], species_images.truths[source], backend.layout.grid_hw)
    return counts, time.perf_counter() - started


def sweep(config: SegmentationScoreConfig) -> dict[str, Any]:
    """Segment the benchmark per species from ``support_data`` for every model, layer and support
    size, and score each run (see the module docstring)."""
    from traitlens.backbones import load_backbone
    from traitlens.segment.backends.features import FeatureBackend
    from traitlens.segment.config import SegmentConfig
    from traitlens.segment.support import read_support

    assert config.support_data is not None
    benchmark = read_benchmark(config.data)
    names = benchmark_names(benchmark)
    species_images = SpeciesImages.read(benchmark, config.max_images)
    groups = species_images.groups
    largest = max(config.n_support)
    support = read_support([], [], config.support_data, largest, None)
    to_benchmark = _label_table(support.names, names, f"--support-data {config.support_data}")
    runs = []
    for model in config.models:
        backbone = load_backbone(model, weights=config.weights, pretrained=config.pretrained)
        for layer, n_support in _sweep_settings(config, backbone.layer_names):
            segment_config = SegmentConfig(data=config.data, out=config.out, model=model, weights=config.weights,
                                           pretrained=config.pretrained, layer=layer, match="class", n_support=n_support,
                                           device=config.device)
            backend = FeatureBackend(segment_config, len(support.names), backbone)
            counts, seconds = count_per_species(backend, species_images, support, n_support, to_benchmark, len(names))
            rows = counts.rows(names, 2)
            # a species with fewer labelled specimens than asked uses all it has: the run says how many that was
            used = min(len(support.of_class(species)[:n_support]) for species in groups)
            runs.append({"model": model, "layer": backend.layer, "n_support": n_support, "n_support_fewest": used,
                         "n_images": counts.n_images,
                         "images_per_second": counts.n_images / seconds, "labels": rows, **summary(rows, config.min_patches)})
    return {"data": str(config.data), "support_data": str(config.support_data), "min_patches": config.min_patches,
            "iou_goal": IOU_GOAL, "runs": runs}


def _markdown(result: dict[str, Any]) -> str:
    if "runs" not in result:
        lines = ["# Segmentation against the benchmark", "",
                 f"`{result['pred']}` on `{result['data']}`: {result['n_images']} images "
                 f"(its {result['n_support_images_left_out']} support image(s) left out). IoU per label, accumulated over the "
                 f"images; a trait is in the headline mean when its mean area is at least {result['min_patches']:g} patches.", "",
                 markdown_table(result["labels"], ["label", "n_images", "mean_area_patches", "iou"]),
                 f"Mean IoU, traits of at least {result['min_patches']:g} patches: "
                 f"{_number(result['mean_iou_large_traits'])}; all traits: {_number(result['mean_iou_traits'])}."]
        return "\n".join(lines) + "\n"
    table = [{"model": run["model"], "layer": run["layer"], "support per species": run["n_support"],
              f"mean IoU (traits ≥ {result['min_patches']:g} patches)": run["mean_iou_large_traits"],
              "mean IoU (all traits)": run["mean_iou_traits"],
              **{row["label"]: row["iou"] for row in run["labels"]}} for run in result["runs"]]
    columns = list(table[0]) if table else []
    return "\n".join(["# One-shot segmentation on the benchmark", "",
                      f"Each species of `{result['data']}` segmented from its first N labelled specimens of "
                      f"`{result['support_data']}` (a pseudo-video per species); IoU per label, accumulated over the images; "
                      f"the first mean is over the traits whose mean area is at least {result['min_patches']:g} patches of "
                      "the model's grid.", "",
                      markdown_table(table, columns)]) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def score_segmentation(config: SegmentationScoreConfig) -> dict[str, Any]:
    """Score ``pred`` or run the sweep; writes ``out/segmentation.json`` and ``out/segmentation.md``
    (written into, not claimed: :func:`traitlens.specimens.benchmark.claim_score_folder`)."""
    check_output_folder(config.out, ScoringError)
    result = score_predictions(config) if config.pred is not None else sweep(config)
    config.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config.out / "segmentation.json", result)
    write_text(config.out / "segmentation.md", _markdown(result))
    return result



