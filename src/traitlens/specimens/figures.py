"""The pictures of a report over a specimens benchmark (the demo's): what people would rather look
at than read.

- per trait, the top images of the SAE latent that finds it best, its patch map over each, beside
  the trait's ground-truth mask;
- per look-alike pair, one image of the species with its trait, Grad-CAM and Finer-CAM against
  the look-alike;
- per pair, images before and after its trait latents are zeroed, with both classes' probabilities;
- small bar charts (SVG, inline): AP per feature kind per trait, flip rate of the trait latents
  against matched random latents.

Pictures are small PNG files in one folder beside the page (written atomically), each at most
:data:`TILE` pixels on a side and drawn as the model saw the image (its crop and resize), so the
patch grid lines up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from traitlens.atomic import atomic_save_png
from traitlens.backbones import Backbone
from traitlens.data import ImageSource
from traitlens.explain.maps import cam_maps
from traitlens.features import LatentFeatures
from traitlens.features.store_images import source_indices
from traitlens.interventions.edits import LatentEdit, latent_edit
from traitlens.interventions.setup import SAEOnModel
from traitlens.interventions.steer import steer_batch
from traitlens.overlay import overlay
from traitlens.specimens.benchmark import Benchmark
from traitlens.specimens.reliance import read_oracle_map
from traitlens.store import ActivationStore

TILE = 112
N_TOP_IMAGES = 3
N_SUPPRESSED = 2
MASK_RGB = np.array([0.0, 200.0, 255.0])
SERIES_COLOURS = ("#3a7bd5", "#e0a030", "#8a8a8a", "#b05fc0", "#3aa067")


@dataclass
class ReportFigures:
    """HTML pieces (escaped, with relative ``src``) keyed by trait or pair, and inline charts."""

    discovery: dict[str, str] = field(default_factory=dict)
    localization: dict[str, str] = field(default_factory=dict)
    suppression: dict[str, str] = field(default_factory=dict)
    discovery_chart: str = ""
    flips_chart: str = ""


def _tile(image: Image.Image) -> Image.Image:
    scale = TILE / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)


def masked(view: Image.Image, mask_hw: np.ndarray) -> Image.Image:
    """The view with the mask's pixels tinted."""
    rgb_hw3 = np.asarray(view.convert("RGB"), dtype=np.float64)
    rgb_hw3[mask_hw] = 0.45 * rgb_hw3[mask_hw] + 0.55 * MASK_RGB
    return Image.fromarray(np.round(rgb_hw3).astype(np.uint8))


def patch_heat(grid_gg: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A patch map scaled to [0, 1] by its max and stretched (nearest) over the view."""
    top = float(grid_gg.max())
    scaled = grid_gg / top if top > 0 else np.zeros_like(grid_gg)
    tensor = torch.as_tensor(scaled, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(tensor, size=size_hw, mode="nearest")[0, 0].numpy()


class Pictures:
    """Writes tiles into ``folder`` and gives their ``<img>`` tags, relative to the page."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix

    def img(self, name: str, image: Image.Image, alt: str, caption: str = "") -> str:
        atomic_save_png(self.folder / name, _tile(image))
        tag = f'<img loading="lazy" src="{escape(self.prefix)}/{escape(name)}" alt="{escape(alt)}" title="{escape(alt)}">'
        return f"<figure>{tag}<figcaption>{caption}</figcaption></figure>" if caption else f"<figure>{tag}</figure>"


def _view_and_mask(backbone: Backbone, source: ImageSource, index: int, mask_hw: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    image = source.load_image(index)
    return backbone.preprocess.view(image), backbone.preprocess.mask(mask_hw.astype(np.int64)) > 0


def discovery_figures(pictures: Pictures, placed: SAEOnModel, features: LatentFeatures, source: ImageSource,
                      benchmark: Benchmark, rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Per trait: the best SAE latent's top images, its map over each, beside the trait's mask."""
    store = ActivationStore(Path(features.acts))
    index_of = source_indices(store, source)
    traits = list(benchmark.trait_labels)
    figures: dict[str, str] = {}
    for row in rows:
        latent, trait = row.get("sae feature"), row["trait"]
        if latent is None or trait not in traits:
            continue
        images, _ = features.top_images(latent)
        tiles = []
        for image in [int(i) for i in images if int(i) in index_of][:N_TOP_IMAGES]:
            index = index_of[image]
            record = source.records[index]
            mask_hw = benchmark.trait_masks(benchmark.resolve(record.source))[traits.index(trait)]
            view, mask = _view_and_mask(placed.backbone, source, index, mask_hw)
            heat = patch_heat(features.patch_map(latent, image), (view.height, view.width))
            stem = f"discovery-{trait}-{image}"
            tiles.append(pictures.img(f"{stem}-latent.png", overlay(view, heat), f"latent {latent} on {record.source}") +
                         pictures.img(f"{stem}-mask.png", masked(view, mask), f"{trait} mask of {record.source}"))
        if tiles:
            figures[trait] = (f'<div class="figrow"><span class="figlabel">{escape(trait)}: latent {latent}, its top images '
                              f"(map | {escape(trait)} mask)</span>{''.join(tiles)}</div>")
    return figures


def _first_images(source: ImageSource, benchmark: Benchmark, species: str, count: int) -> list[int]:
    found = [index for index, record in enumerate(source.records)
             if benchmark.image_species.get(benchmark.resolve(record.source)) == species]
    return found[:count]


def localization_figures(pictures: Pictures, placed: SAEOnModel, source: ImageSource, benchmark: Benchmark,
                         class_index: dict[str, int], oracle: Path | None = None) -> dict[str, str]:
    """Per look-alike pair: an image of its second species with the trait's mask, its
    counterfactual twin (when the benchmark has twins), Grad-CAM of the species, Finer-CAM against
    the look-alike and the oracle map (from a ``score reliance`` folder, when given)."""
    backbone = placed.backbone
    figures: dict[str, str] = {}
    for pair in benchmark.lookalikes:
        for index in _first_images(source, benchmark, pair.b, 1):
            record = source.records[index]
            view, mask = _view_and_mask(backbone, source, index, benchmark.distinguishing_mask(benchmark.resolve(record.source)))
            pixels_1chw = backbone.preprocess.image(source.load_image(index))[None].to(backbone.device)
            target = torch.tensor([class_index[pair.b]])
            plain = cam_maps(backbone, pixels_1chw, "grad-cam", target)[0]
            finer = cam_maps(backbone, pixels_1chw, "grad-cam", target, torch.tensor([[class_index[pair.a]]]))[0]
            stem, key = f"localization-{pair.a}-{pair.b}", benchmark.resolve(record.source)
            tiles = [pictures.img(f"{stem}-mask.png", masked(view, mask), f"{pair.trait} of {record.source}", "trait")]
            if key in benchmark.twins:
                with Image.open(benchmark.root / benchmark.twins[key]) as twin:
                    tiles.append(pictures.img(f"{stem}-twin.png", backbone.preprocess.view(twin.convert("RGB")),
                                              f"the twin of {record.source}", "twin"))
            tiles += [pictures.img(f"{stem}-gradcam.png", overlay(view, plain), f"Grad-CAM of {pair.b}", "Grad-CAM"),
                      pictures.img(f"{stem}-finer.png", overlay(view, finer), f"Finer-CAM of {pair.b} against {pair.a}",
                                   f"Finer-CAM vs {escape(pair.a)}")]
            if oracle is not None:
                heat = patch_heat(np.clip(read_oracle_map(oracle, key), 0, None), (view.height, view.width))
                tiles.append(pictures.img(f"{stem}-oracle.png", overlay(view, heat), f"oracle map of {record.source}", "oracle"))
            figures[f"{pair.a} / {pair.b}"] = (f'<div class="figrow"><span class="figlabel">{escape(pair.b)} against '
                                               f"{escape(pair.a)} ({escape(pair.trait)})</span>{''.join(tiles)}</div>")
    return figures


def suppression_figures(pictures: Pictures, placed: SAEOnModel, source: ImageSource, benchmark: Benchmark,
                        class_index: dict[str, int], trait_latents: dict[str, list[int]]) -> dict[str, str]:
    """Per pair: images of its second species before and after the trait latents are zeroed on
    every token, with the probabilities of the species and its look-alike."""
    backbone, layout = placed.backbone, placed.backbone.layer(placed.layer).layout
    figures: dict[str, str] = {}
    for pair in benchmark.lookalikes:
        latents = trait_latents.get(pair.trait, [])
        if not latents:
            continue
        edit = latent_edit(placed.sae, [LatentEdit(latent, "zero") for latent in latents], layout, placed.tokens)
        tiles = []
        for index in _first_images(source, benchmark, pair.b, N_SUPPRESSED):
            image = source.load_image(index)
            pixels_1chw = backbone.preprocess.image(image)[None].to(backbone.device)
            clean_1c, edited_1c, _, _ = steer_batch(backbone, placed.layer, edit, pixels_1chw)
            before, after = clean_1c.double().softmax(1)[0], edited_1c.double().softmax(1)[0]
            b, a = class_index[pair.b], class_index[pair.a]
            caption = (f"{escape(pair.b)} {before[b]:.2f} &rarr; {after[b]:.2f}<br>"
                       f"{escape(pair.a)} {before[a]:.2f} &rarr; {after[a]:.2f}")
            tiles.append(pictures.img(f"suppression-{pair.trait}-{index}.png", backbone.preprocess.view(image),
                                      source.records[index].source, caption))
        figures[f"{pair.a} / {pair.b}"] = (f'<div class="figrow"><span class="figlabel">{escape(pair.trait)} latents zeroed '
                                           f"on {escape(pair.b)}</span>{''.join(tiles)}</div>")
    return figures


def bar_chart(title: str, groups: Sequence[str], series: dict[str, Sequence[float | None]], top: float = 1.0,
              marks: Sequence[float | None] | None = None) -> str:
    """A grouped bar chart as inline SVG: one group per name, one bar per series (a missing value
    draws none), ``marks`` a tick per group (a chance level); every label escaped."""
    width, height, left, bottom, gap = 640, 220, 36, 52, 10
    slot = (width - left) / max(len(groups), 1)
    bar = (slot - gap) / max(len(series), 1)
    scale = (height - bottom - 20) / top
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for tick in (0.0, top / 2, top):
        y = height - bottom - tick * scale
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{tick:g}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * slot + gap / 2
        for s, (name, values) in enumerate(series.items()):
            value = values[g]
            if value is None:
                continue
            h = max(0.0, min(value, top)) * scale
            parts.append(f'<rect x="{x0 + s * bar:.1f}" y="{height - bottom - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                         f'fill="{SERIES_COLOURS[s % len(SERIES_COLOURS)]}"><title>{escape(group)}, {escape(name)}: '
                         f"{value:.3f}</title></rect>")
        if marks is not None and marks[g] is not None:
            y = height - bottom - min(float(marks[g] or 0), top) * scale
            parts.append(f'<line x1="{x0:.1f}" x2="{x0 + slot - gap:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" '
                         'stroke-dasharray="3 2"/>')
        parts.append(f'<text x="{x0 + (slot - gap) / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">'
                     f"{escape(group)}</text>")
    legend = [(name, SERIES_COLOURS[s % len(SERIES_COLOURS)]) for s, name in enumerate(series)]
    if marks is not None:
        legend.append(("chance", "#c00"))
    for k, (name, colour) in enumerate(legend):
        x = left + k * 110
        parts.append(f'<rect x="{x}" y="{height - 18}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{height - 9}" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def report_figures(folder: Path, prefix: str, results: dict[str, Any], placed: SAEOnModel, features: LatentFeatures,
                   source: ImageSource, benchmark: Benchmark) -> ReportFigures:
    """Every picture of the demo report, written into ``folder`` (``prefix``: its path from the page)."""
    pictures = Pictures(folder, prefix)
    class_index = benchmark.class_index(placed.backbone.class_names, placed.backbone.spec)
    rows = results["discovery"]["rows"]
    kinds = {"SAE latent": "sae", "neuron": "neurons", "PCA": "pca", "k-means": "kmeans"}
    pairs = [row for row in results["suppression"] if row["pair"] != "all"]
    return ReportFigures(
        discovery=discovery_figures(pictures, placed, features, source, benchmark, rows),
        localization=localization_figures(pictures, placed, source, benchmark, class_index),
        suppression=suppression_figures(pictures, placed, source, benchmark, class_index, results["trait_latents"]),
        discovery_chart=bar_chart("best single feature's patch AP per trait", [row["trait"] for row in rows],
                                  {label: [row[key] for row in rows] for label, key in kinds.items()},
                                  marks=[row["chance"] for row in rows]),
        flips_chart=bar_chart("look-alike flips when a pair's trait latents are zeroed", [row["trait"] for row in pairs],
                              {"trait latents": [row["flip_rate"] for row in pairs],
                               "matched random latents": [row["flip_rate_random"] for row in pairs]}),
    )
