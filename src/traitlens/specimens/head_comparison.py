"""``traitlens specimens score heads``: heads trained on a frozen model (``heads train``), scored
on a twin benchmark side by side.

Per head: its accuracy on the benchmark and its twin reliance (each head is its own classifier,
so its oracle maps are its own: :mod:`traitlens.specimens.reliance` with the head); localization
of the distinguishing trait by Grad-CAM and Finer-CAM (look-alike reference) of the head's logits
and, for class-query heads, by their own maps (the mean over attention heads, and each image's
top-ranked head by greedy head blurring) at pixel and patch resolution and against the head's
oracle (:mod:`traitlens.specimens.cam_localization`); and faithfulness (deletion and insertion
AUC of the target's probability, RISE) of the same maps on the first ``n_faithfulness`` images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from traitlens.atomic import atomic_write_json
from traitlens.backbones import Backbone, load_backbone
from traitlens.checks import check_int
from traitlens.data import open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.distributed import Workers
from traitlens.explain.faithfulness import deletion_auc, insertion_auc
from traitlens.explain.maps import compute_cams
from traitlens.explain.methods import method_by_name
from traitlens.heads.attach import load_head_backbone
from traitlens.heads.linear_head import read_head_json
from traitlens.specimens.benchmark import ScoringError
from traitlens.specimens.cam_localization import LOCALIZATION_COLUMNS, display_name, lookalike_localization
from traitlens.specimens.flips import lookalike_map
from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy
from traitlens.specimens.reliance import RelianceConfig, read_oracle_map, read_twin_benchmark, score_reliance
from traitlens.tables import markdown_table, write_text

SCORE = "heads"
ACCURACY_COLUMNS = ["head", "kind", "layer", "val_accuracy", "accuracy", "reliance"]
FAITHFULNESS_COLUMNS = ["head", "method", "n_images", "deletion_auc", "insertion_auc"]


@dataclass(frozen=True)
class HeadComparisonConfig:
    model: str
    heads: tuple[Path, ...]
    data: Path
    out: Path
    weights: Path | None = None
    pretrained: bool = True
    n_faithfulness: int = 64
    """Images (the first scored ones) whose maps get deletion and insertion curves."""
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.heads:
            raise ScoringError("name at least one head (--head DIR)")
        names = [_head_name(head) for head in self.heads]
        if len(set(names)) != len(names):  # each head's scores go in a subfolder named like it
            raise ScoringError(f"two heads share a folder name ({', '.join(names)}); give each head its own name")
        check_int(self.n_faithfulness, "--n-faithfulness", ScoringError)


def _head_name(head: Path) -> str:
    return head.resolve().name


def _faithfulness(backbone: Backbone, data: Path, methods: Sequence[str], n_images: int) -> list[dict[str, Any]]:
    """Mean deletion and insertion AUC of each method's map of the true species, with the
    look-alike as Finer-CAM's reference, on the first ``n_images`` images of a species with a pair."""
    benchmark = read_twin_benchmark(data)
    source = open_image_source(data)
    class_index = benchmark.class_index(backbone.class_names, backbone.spec)
    lookalike_of = lookalike_map(benchmark, list(class_index))
    sources = [benchmark.resolve(record.source) for record in source.records]
    images = [index for index, name in enumerate(sources) if benchmark.distinguishing_traits(benchmark.image_species[name])]
    # a class-query head's own maps take no reference
    variants = [(method, refs) for method in methods
                for refs in ((False,) if method_by_name(method).evidence == "class_attention" else (False, True))]
    sums = {variant: [0.0, 0.0] for variant in variants}
    count = 0
    for batch in pixel_batches(source, backbone.preprocess, 16, images[:n_images]):
        pixels_bchw = batch.pixels_bchw.to(backbone.device)
        species_b = torch.tensor([class_index[benchmark.image_species[sources[index]]] for index in batch.indices])
        for method, with_refs in variants:
            refs_bk = torch.tensor([[lookalike_of[int(species)]] for species in species_b]) if with_refs else None
            maps_bhw = compute_cams(backbone, pixels_bchw, method, species_b, refs_bk).maps_bhw
            sums[(method, with_refs)][0] += float(deletion_auc(backbone, pixels_bchw, maps_bhw, species_b).sum())
            sums[(method, with_refs)][1] += float(insertion_auc(backbone, pixels_bchw, maps_bhw, species_b).sum())
        count += len(batch.indices)
    return [{"method": f"Finer-CAM ({display_name(method)}, ref: look-alike)" if with_refs else display_name(method), "n_images": count,
             "deletion_auc": total[0] / count, "insertion_auc": total[1] / count}
            for (method, with_refs), total in sums.items()]


def load_compared_heads(config: HeadComparisonConfig) -> list[Backbone]:
    """The model with each head of ``config`` as its output (one model, shared), every head
    loaded whole: a damaged or foreign one is refused in one line before any work."""
    model = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    return [load_head_backbone(model, head) for head in config.heads]


def score_heads(config: HeadComparisonConfig, backbones: Sequence[Backbone] | None = None) -> dict[str, Any]:
    """Score every head of ``config`` into ``config.out``; returns ``heads.json``'s content.
    ``backbones``: :func:`load_compared_heads`'s, when already loaded."""
    benchmark = read_twin_benchmark(config.data)
    device = Workers(0, 1).device(config.device)
    accuracy_rows, localization_rows, faithfulness_rows = [], [], []
    for head, backbone in zip(config.heads, backbones or load_compared_heads(config), strict=True):
        saved = read_head_json(head)
        kind, name = str(saved.get("kind", "linear")), _head_name(head)
        backbone.to(device)
        folder = config.out / name
        reliance = score_reliance(RelianceConfig(model=config.model, data=config.data, out=folder / "reliance",
                                                 weights=config.weights, pretrained=config.pretrained, head=head,
                                                 device=config.device), backbone)
        accuracy = model_accuracy(AccuracyConfig(model=config.model, data=config.data / "images", weights=config.weights,
                                                 pretrained=config.pretrained, head=head, device=config.device),
                                  show_progress=False, backbone=backbone)
        accuracy_rows.append({"head": name, "kind": kind, "layer": saved.get("layer"),
                              "val_accuracy": (saved.get("metrics") or {}).get("val_accuracy"),
                              "accuracy": accuracy["accuracy"], "reliance": reliance["pairs"][-1]["reliance"]})
        methods = ["grad-cam", *([kind] if backbone.class_attention is not None else [])]
        oracle = {source: read_oracle_map(folder / "reliance", source) for source in benchmark.image_species
                  if benchmark.distinguishing_traits(benchmark.image_species[source])}
        localization = lookalike_localization(backbone, open_image_source(config.data), benchmark, methods,
                                              layer=reliance["layer"], oracle=oracle)
        localization_rows += [{"head": name, **row} for row in localization.rows]
        faithfulness_rows += [{"head": name, **row} for row in _faithfulness(backbone, config.data, methods, config.n_faithfulness)]
    result = {"model": config.model, "data": str(config.data), "heads": [str(head) for head in config.heads],
              "accuracy": accuracy_rows, "localization": localization_rows, "faithfulness": faithfulness_rows}
    atomic_write_json(config.out / "heads.json", json.loads(json.dumps(result)))
    write_text(config.out / "heads.md", "\n".join([
        "**Accuracy and twin reliance** (accuracy on the benchmark's images; reliance: the share of correctly classified "
        "images whose twin turns the head's prediction into the look-alike)", "",
        markdown_table(accuracy_rows, ACCURACY_COLUMNS), "",
        "**Localization of the distinguishing trait** (per head: its own maps, Grad-CAM and Finer-CAM of its logits; "
        "patch columns on the model's grid, one-patch pointing tolerance; oracle: the head's own)", "",
        markdown_table(localization_rows, ["head", *LOCALIZATION_COLUMNS]), "",
        "**Faithfulness** (deletion AUC: lower is better; insertion AUC: higher is better)", "",
        markdown_table(faithfulness_rows, FAITHFULNESS_COLUMNS), ""]))
    return result
