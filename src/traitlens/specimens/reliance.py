"""``traitlens specimens score reliance``: what a model really uses, from counterfactual twins.

Per look-alike pair, the **reliance** rate: of the images the model gets right, the share whose
twin (the same organism and scene, with only the separating trait switched) it calls the
look-alike. Per image, the **oracle map** (:func:`traitlens.specimens.oracle.oracle_maps`) on the
grid of the layer heatmaps are made at: the localization ground truth for this model.

Output folder::

    reliance.json, reliance.md        per pair and overall: images, correct, reliance rate
    oracle/<species>/<stem>.npy       (gh, gw) float32 oracle map of each image
    oracle.json                       the layer and grid the maps are on
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from traitlens.atomic import atomic_save_npy, atomic_write_json
from traitlens.backbones import Backbone
from traitlens.checks import check_int
from traitlens.distributed import Workers
from traitlens.errors import DataError
from traitlens.heads.attach import load_model_with_head
from traitlens.specimens.benchmark import Benchmark, ScoringError, read_benchmark
from traitlens.specimens.oracle import oracle_maps
from traitlens.tables import markdown_table, write_text

ORACLE_DIR = "oracle"


@dataclass(frozen=True)
class RelianceConfig:
    model: str
    data: Path
    out: Path
    layer: str | None = None
    """The layer whose patch grid the oracle maps use (default: the one heatmaps are made at)."""
    weights: Path | None = None
    pretrained: bool = True
    head: Path | None = None
    """A head folder whose classes replace the model's own: the reliance and oracle maps of that head."""
    batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        check_int(self.batch_size, "--batch-size", ScoringError)


def benchmark_pixels(root: Path, sources: Sequence[str], backbone: Backbone) -> torch.Tensor:
    """Benchmark images (paths relative to ``root``) preprocessed for ``backbone``, on its device."""
    images = []
    for source in sources:
        try:
            with Image.open(root / source) as image:
                images.append(backbone.preprocess.image(image.convert("RGB")))
        except OSError as error:
            raise DataError(f"cannot read benchmark image {root / source}: {error}") from error
    return torch.stack(images).to(backbone.device)


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def read_twin_benchmark(data: Path) -> Benchmark:
    """The benchmark at ``data``, refused in one line when it was drawn without twins."""
    benchmark = read_benchmark(data)
    if not benchmark.twins:
        raise ScoringError(f"{data} has no twins; draw the benchmark with `traitlens specimens generate --twins`")
    return benchmark


def score_reliance(config: RelianceConfig, backbone: Backbone | None = None) -> dict[str, Any]:
    """Reliance per pair and oracle maps per image, written to ``config.out``; returns the summary.
    ``backbone``: the model with its head, already loaded (:func:`load_model_with_head`)."""
    from traitlens.explain.maps import default_layer

    benchmark = read_twin_benchmark(config.data)
    if backbone is None:
        backbone = load_model_with_head(config.model, config.weights, config.pretrained, config.head)
    backbone.to(Workers(0, 1).device(config.device))
    class_index = benchmark.class_index(backbone.class_names, config.model)
    layer = backbone.resolve_layer(config.layer) if config.layer is not None else default_layer(backbone)
    grid_hw = backbone.layer(layer).layout.grid_hw
    counts = {pair.trait: {"n_images": 0, "n_correct": 0, "n_to_lookalike": 0} for pair in benchmark.lookalikes}
    sources = sorted(source for source, species in benchmark.image_species.items() if _has_pair(benchmark, species))
    with torch.no_grad():
        for start in range(0, len(sources), config.batch_size):
            batch = sources[start:start + config.batch_size]
            pixels = benchmark_pixels(benchmark.root, batch, backbone)
            twins = benchmark_pixels(benchmark.root, [benchmark.twins[source] for source in batch], backbone)
            species = torch.tensor([class_index[benchmark.image_species[source]] for source in batch], device=backbone.device)
            pairs = [benchmark.lookalike(benchmark.image_species[source]) for source in batch]
            lookalike = torch.tensor([class_index[pair.b if benchmark.image_species[source] == pair.a else pair.a]
                                      for source, pair in zip(batch, pairs, strict=True)], device=backbone.device)
            predicted = backbone.forward(pixels).argmax(-1)
            predicted_twin = backbone.forward(twins).argmax(-1)
            maps = oracle_maps(backbone.forward, pixels, twins, species, lookalike, grid_hw, config.batch_size)
            for row, (source, pair) in enumerate(zip(batch, pairs, strict=True)):
                count = counts[pair.trait]
                count["n_images"] += 1
                if predicted[row] == species[row]:
                    count["n_correct"] += 1
                    count["n_to_lookalike"] += int(predicted_twin[row] == lookalike[row])
                atomic_save_npy(config.out / ORACLE_DIR / Path(source).relative_to("images").with_suffix(".npy"),
                                maps[row].to(torch.float32).numpy())
    total = {key: sum(count[key] for count in counts.values()) for key in ("n_images", "n_correct", "n_to_lookalike")}
    rows: list[dict[str, Any]] = [
        {"pair": f"{pair.a} / {pair.b}", "trait": pair.trait, **counts[pair.trait],
         "reliance": _rate(counts[pair.trait]["n_to_lookalike"], counts[pair.trait]["n_correct"])}
        for pair in benchmark.lookalikes]
    rows.append({"pair": "all", "trait": "", **total, "reliance": _rate(total["n_to_lookalike"], total["n_correct"])})
    summary = {"model": config.model, "data": str(config.data), "layer": layer, "grid_hw": list(grid_hw), "pairs": rows}
    atomic_write_json(config.out / "oracle.json", {"layer": layer, "grid_hw": list(grid_hw)})
    atomic_write_json(config.out / "reliance.json", summary)
    write_text(config.out / "reliance.md", _markdown(summary))
    return summary


def _has_pair(benchmark: Benchmark, species: str) -> bool:
    return any(species in (pair.a, pair.b) for pair in benchmark.lookalikes)


def _markdown(summary: dict[str, Any]) -> str:
    header = (f"# Twin reliance of {summary['model']}\n\nOf the images the model gets right, the share whose twin "
              "(the same organism and scene with only the separating trait switched) it calls the look-alike. "
              f"Oracle maps on the {summary['grid_hw'][0]}x{summary['grid_hw'][1]} grid of `{summary['layer']}`.\n\n")
    return header + markdown_table(summary["pairs"], ["pair", "trait", "n_images", "n_correct", "n_to_lookalike", "reliance"]) + "\n"


def read_oracle_map(out: Path, source: str) -> np.ndarray:
    """The oracle map of benchmark image ``source`` (``images/...``) in a reliance folder."""
    path = out / ORACLE_DIR / Path(source).relative_to("images").with_suffix(".npy")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ScoringError(f"cannot read oracle map {path}: {error}") from error
    if array.ndim != 2 or array.dtype != np.float32:
        raise ScoringError(f"oracle map {path} is not a 2-d float32 array")
    return array
