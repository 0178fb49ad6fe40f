"""``traitlens report``: the demo's pipeline on your model and images — extract a layer, train a
TopK SAE, analyze every latent, and write one page with pictures of what was found.

Under ``out``: ``acts/`` (the layer's tokens), ``sae/``, ``features/`` (with the browsable
``features/report/``), ``report-figures/`` and ``report.html`` + ``report.json``. What the page
holds depends on what the source has:

- always: the SAE's fit (explained variance, L0, dead latents) and, per image class or per most
  frequent latent, heatmaps of the model's prediction (Grad-CAM and Finer-CAM against the closest
  class);
- with labels: per class, the latents that best rank its images (average precision against
  chance), their top images with each latent's patch map; and when the labels are the model's
  classes, its accuracy and a causal test: per class, the share of its correctly classified images
  whose prediction changes when its latents are zeroed inside the forward pass, against as many
  random latents of matched firing rate;
- with masks (a segmentation source): per mask label, the latent that best finds its patches,
  its map beside the label's mask.

Without ``--data`` the embedded specimens model is reported on a fresh specimens benchmark with
its ground truth: that is the demo (:mod:`traitlens.demo`), which ``make demo`` runs. Every
step resumes where a killed run stopped (extraction, SAE, features); the scoring runs again.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.atomic import atomic_write_bytes, atomic_write_json
from traitlens.backbones import Backbone, load_backbone
from traitlens.checks import check_int
from traitlens.data import ImageSource, open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.errors import TraitlensError
from traitlens.explain.maps import cam_maps
from traitlens.features import FeaturesConfig, LatentFeatures, analyze_features
from traitlens.features.report import write_report
from traitlens.features.store_images import source_indices
from traitlens.html_pages import number_text, page
from traitlens.interventions.edits import LatentEdit, latent_edit
from traitlens.interventions.setup import SAEOnModel, load_sae_on_model
from traitlens.interventions.steer import predicted_classes
from traitlens.output_folder import claim_output_folder
from traitlens.overlay import overlay
from traitlens.sae.evaluation import reconstruction_metrics
from traitlens.specimens.figures import Pictures, bar_chart, masked, patch_heat
from traitlens.specimens.report import train_trait_sae
from traitlens.specimens.suppression import matched_random_latents
from traitlens.store import ActivationStore, ExtractConfig, extract

COMMAND = "report"
FIGURES = "report-figures"
N_STEPS = 5


@dataclass(frozen=True)
class DataReportConfig:
    """What ``traitlens report`` runs; ``layer`` defaults to the one before the model's last."""

    model: str
    out: Path
    data: Path | None = None
    layer: str | None = None
    weights: Path | None = None
    pretrained: bool = True
    sae_expansion: int = 8
    sae_k: int = 16
    sae_epochs: int = 5
    top_latents: int = 3
    """Latents per class (and per mask label) shown and zeroed."""
    max_classes: int = 16
    """Classes (or mask labels) the page shows, the most frequent first."""
    n_random: int = 3
    """Draws of the matched random control of the causal test."""
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("sae_expansion", "sae_k", "sae_epochs", "top_latents", "max_classes", "n_random"):
            check_int(getattr(self, name), f"--{name.replace('_', '-')}", TraitlensError)


def _step(number: int, text: str) -> None:
    print(f"[{number}/{N_STEPS}] {text}", file=sys.stderr, flush=True)


def _report_layer(backbone: Backbone, layer: str | None) -> str:
    if layer is not None:
        return backbone.resolve_layer(layer)
    names = backbone.layer_names
    return names[-2] if len(names) > 1 else names[-1]


def _model_classes(backbone: Backbone, source: ImageSource) -> dict[str, int] | None:
    """Each label of the source as the model's class index, when every label is one of its classes."""
    names = backbone.class_names
    labels = {record.label for record in source.records if record.label is not None}
    if names is None or not labels or not labels <= set(names):
        return None
    return {label: names.index(label) for label in sorted(labels)}


def _view(backbone: Backbone, source: ImageSource, index: int) -> Any:
    return backbone.preprocess.view(source.load_image(index))


class _Report:
    """The scoring and pictures of one report, over the saved store, SAE and features."""

    def __init__(self, config: DataReportConfig, placed: SAEOnModel, features: LatentFeatures, source: ImageSource) -> None:
        self.config, self.placed, self.features, self.source = config, placed, features, source
        self.backbone = placed.backbone
        store = ActivationStore(config.out / "acts")
        self.index_of = source_indices(store, source)
        # images extraction skipped (unreadable) are in the source but not in the store: never load them
        self.held = sorted(set(self.index_of.values()))
        self.pictures = Pictures(config.out / FIGURES, FIGURES)
        self.model_classes = _model_classes(self.backbone, source)

    def _classes(self) -> list[tuple[int, str]]:
        """The feature columns of the most frequent classes (ties by name), at most ``max_classes``."""
        names = self.features.class_names
        counts = {name: sum(self.source.records[index].label == name for index in self.held) for name in names}
        # a dataset's class list may name classes it has no image of (an HF ClassLabel): they have nothing to show
        ranked = sorted((c for c in range(len(names)) if counts[names[c]]), key=lambda c: (-counts[names[c]], names[c]))
        return [(c, names[c]) for c in ranked[: self.config.max_classes]]

    def _images_of(self, name: str) -> list[int]:
        return [index for index in self.held if self.source.records[index].label == name]

    def _top_images_row(self, latent: int, label: str, mask_value: int | None = None) -> str:
        """The latent's top images with its patch map over each (beside the label's mask when given)."""
        images, _ = self.features.top_images(latent)
        tiles = []
        for image in [int(i) for i in images if int(i) in self.index_of][:3]:
            index = self.index_of[image]
            view = _view(self.backbone, self.source, index)
            heat = patch_heat(self.features.patch_map(latent, image), (view.height, view.width))
            tiles.append(self.pictures.img(f"latent-{latent}-{image}.png", overlay(view, heat),
                                           f"latent {latent} on {self.source.records[index].source}"))
            mask_hw = self.source.load_mask(index) if mask_value is not None else None
            if mask_hw is not None:
                shown = self.backbone.preprocess.mask(mask_hw.astype(np.int64)) == mask_value
                tiles.append(self.pictures.img(f"label-{mask_value}-{image}.png", masked(view, shown),
                                               f"{label} in {self.source.records[index].source}"))
        return f'<div class="figrow"><span class="figlabel">{escape(label)}: latent {latent}</span>{"".join(tiles)}</div>'

    def class_latents(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Per class, its ``top_latents`` latents by class AP, with the chance level."""
        rows, figures = [], []
        ap_wc, prevalence_c = self.features.class_ap, self.features.class_prevalence
        for c, name in self._classes():
            order = [int(w) for w in np.argsort(-np.nan_to_num(ap_wc[:, c], nan=-1.0), kind="stable")[: self.config.top_latents]]
            rows.append({"class": name, "latents": order, "ap": [float(ap_wc[w, c]) for w in order],
                         "chance": float(prevalence_c[c])})
            figures.append(self._top_images_row(order[0], name))
        return rows, figures

    def label_latents(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Per mask label, the latent that best finds its patches."""
        rows, figures = [], []
        ap_wl, prevalence_l = self.features.label_ap, self.features.label_prevalence
        for column, name in enumerate(self.features.label_names[: self.config.max_classes]):
            if not np.isfinite(ap_wl[:, column]).any():
                continue
            best = int(np.nanargmax(ap_wl[:, column]))
            rows.append({"label": name, "latent": best, "ap": float(ap_wl[best, column]),
                         "chance": float(prevalence_l[column])})
            figures.append(self._top_images_row(best, name, mask_value=column + 1))
        return rows, figures

    def heatmaps(self) -> list[str]:
        """Per class (or, without labels, the first images), Grad-CAM of the prediction and
        Finer-CAM against the closest class."""
        chosen: list[int] = []
        for _, name in self._classes():
            chosen += self._images_of(name)[:1]
        if not chosen:
            chosen = self.held[: self.config.max_classes]
        rows = []
        names = self.backbone.class_names
        for index in chosen:
            pixels_1chw = self.backbone.preprocess.image(self.source.load_image(index))[None].to(self.backbone.device)
            with torch.no_grad():
                top2 = self.backbone.forward(pixels_1chw)[0].topk(min(2, len(names or [0, 1]))).indices.tolist()
            target = torch.tensor([top2[0]])
            view = _view(self.backbone, self.source, index)
            tiles = [self.pictures.img(f"cam-{index}.png", overlay(view, cam_maps(self.backbone, pixels_1chw, "grad-cam", target)[0]),
                                       f"Grad-CAM of the prediction on {self.source.records[index].source}", "Grad-CAM")]
            if len(top2) > 1:
                finer = cam_maps(self.backbone, pixels_1chw, "grad-cam", target, torch.tensor([[top2[1]]]))[0]
                closest = names[top2[1]] if names else str(top2[1])
                tiles.append(self.pictures.img(f"finer-{index}.png", overlay(view, finer), f"Finer-CAM against {closest}",
                                               f"Finer-CAM vs {escape(closest)}"))
            predicted = names[top2[0]] if names else str(top2[0])
            rows.append(f'<div class="figrow"><span class="figlabel">{escape(self.source.records[index].source)}: '
                        f"predicted {escape(predicted)}</span>{''.join(tiles)}</div>")
        return rows

    def _change_rate(self, latents: list[int], pixels: list[torch.Tensor], before_n: torch.Tensor,
                     eligible_n: torch.Tensor) -> float | None:
        """The share of the eligible images whose prediction changes with ``latents`` zeroed."""
        if not bool(eligible_n.any()):
            return None
        layout = self.backbone.layer(self.placed.layer).layout
        edit = latent_edit(self.placed.sae, [LatentEdit(latent, "zero") for latent in latents], layout, self.placed.tokens)
        after_n = predicted_classes(self.backbone, pixels, self.placed.layer, edit)
        return float((after_n[eligible_n] != before_n[eligible_n]).double().mean())

    def causal(self, class_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per class, the share of its correctly classified images whose prediction changes when
        its latents are zeroed, against matched random latents (mean over draws)."""
        if self.model_classes is None:
            return []
        frequency_w = torch.as_tensor(self.features.frequency)
        generator = torch.Generator().manual_seed(0)
        rows = []
        for row in class_rows:
            images = self._images_of(row["class"])
            pixels = [batch.pixels_bchw for batch in pixel_batches(self.source, self.backbone.preprocess, 32, images)]
            before_n = predicted_classes(self.backbone, pixels)
            eligible_n = before_n == self.model_classes[row["class"]]
            draws = [self._change_rate(matched_random_latents(frequency_w, row["latents"], 20, generator), pixels, before_n,
                                       eligible_n) for _ in range(self.config.n_random)]
            random = [draw for draw in draws if draw is not None]
            rows.append({"class": row["class"], "n_eligible": int(eligible_n.sum()),
                         "change_rate": self._change_rate(row["latents"], pixels, before_n, eligible_n),
                         "change_rate_random": sum(random) / len(random) if random else None})
        return rows

def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite number as None: JSON has no NaN, and a score that
    cannot be computed (no positives) is missing, not a number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f'<td class="num">{number_text(value)}</td>' if isinstance(value, float) else
                                   f"<td>{escape(str(value)) if value is not None else 'n/a'}</td>" for value in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(config: DataReportConfig, result: dict[str, Any], figures: dict[str, list[str]], features_index: Path) -> str:
    fit, accuracy = result["sae"], result["accuracy"]
    index_href = escape(features_index.relative_to(config.out).as_posix())
    parts = [f"<h1>traitlens report: {escape(config.model)} on {escape(str(config.data))}</h1>",
             f'<p class="meta">{result["n_images"]:,} images; layer {escape(result["layer"])}: a TopK SAE of '
             f'{fit["width"]:,} latents (k = {config.sae_k}) explains {fit["explained_variance"]:.1%} of the variance of its '
             f'tokens, L0 {fit["l0"]:.1f}, {fit["dead"]:,} dead latents. <a href="{index_href}">Browse every latent</a>.'
             + (f" Accuracy {accuracy['accuracy']:.1%} on the labelled images." if accuracy else "") + "</p>"]
    if result["classes"]:
        parts += ["<h2>Which latents find each class?</h2>",
                  "<p>Per class, the latents whose image activation (max over its tokens) best ranks the class's images: "
                  "average precision against <i>chance</i>, the class's share of the images. Below, each class's best latent "
                  "on its top images, its patch map drawn over each.</p>",
                  _table(["class", "latents", "AP", "chance"],
                         [[row["class"], ", ".join(map(str, row["latents"])), ", ".join(number_text(ap) for ap in row["ap"]),
                           row["chance"]] for row in result["classes"]]),
                  *figures["classes"]]
    if result["labels"]:
        parts += ["<h2>Which latent finds each mask label?</h2>",
                  "<p>Per label of the masks, the latent that best finds the patches showing it (patch-level average "
                  "precision against <i>chance</i>, the label's share of the patches); its map beside the label's mask.</p>",
                  _table(["label", "latent", "AP", "chance"],
                         [[row["label"], row["latent"], row["ap"], row["chance"]] for row in result["labels"]]),
                  *figures["labels"]]
    parts += ["<h2>Where does the model look?</h2>",
              "<p>Grad-CAM of the predicted class, and Finer-CAM against the class the model ranks second: what tells "
              "the two apart.</p>", *figures["heatmaps"]]
    if result["causal"]:
        rows = result["causal"]
        parts += ["<h2>Does the model depend on them?</h2>",
                  f"<p>Per class, the share of its correctly classified images whose prediction changes when the class's "
                  f"{config.top_latents} latents are zeroed inside the forward pass (the SAE's reconstruction error added "
                  f"back), against as many random latents of matched firing rate ({config.n_random} draws).</p>",
                  _table(["class", "eligible images", "change: class latents", "change: matched random"],
                         [[row["class"], row["n_eligible"], row["change_rate"], row["change_rate_random"]] for row in rows]),
                  bar_chart("prediction changes when a class's latents are zeroed", [row["class"] for row in rows],
                            {"class latents": [row["change_rate"] for row in rows],
                             "matched random latents": [row["change_rate_random"] for row in rows]})]
    return page(f"traitlens report: {config.model}", "\n".join(parts))


def report_on_data(config: DataReportConfig) -> str:
    """Run every step under ``config.out`` (resuming finished ones) and return what to print."""
    if config.data is None:
        from traitlens.demo import DEMO_MODEL, DemoConfig, run_demo

        if config.model != DEMO_MODEL:
            raise TraitlensError(f"--data is needed for {config.model}; without it the report is the demo, on {DEMO_MODEL}")
        demo = DemoConfig(out=config.out, overwrite=config.overwrite)
        return run_demo(demo if config.layer is None else DemoConfig(out=config.out, overwrite=config.overwrite, layer=config.layer))
    backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    layer = _report_layer(backbone, config.layer)
    source = open_image_source(config.data)
    # claimed only once the request is known to be good: --overwrite must not empty a folder for a bad one
    claim_output_folder(config.out, COMMAND, overwrite=config.overwrite, resumable=True, own_files=("report.json",))
    acts, features_dir = config.out / "acts", config.out / "features"
    _step(1, f"extract {layer} tokens of {len(source):,} images")
    extract(ExtractConfig(model=config.model, data=config.data, layers=(layer,), out=acts, weights=config.weights,
                          pretrained=config.pretrained, tokens="all", device=config.device))
    _step(2, f"train a TopK SAE ({config.sae_expansion}x, k={config.sae_k}, {config.sae_epochs} epochs)")
    sae_dir = train_trait_sae(acts, layer, config.out / "sae", config.sae_expansion, config.sae_k, config.sae_epochs)
    _step(3, "features: every latent's statistics, top images and associations, and their report")
    analyze_features(FeaturesConfig(sae=sae_dir, acts=acts, out=features_dir))
    features_index = write_report(features_dir)
    _step(4, "scores and pictures: latents per class and mask label, heatmaps, and the causal test")
    placed = load_sae_on_model(config.model, sae_dir, weights=config.weights, pretrained=config.pretrained, device="cpu")
    features = LatentFeatures(features_dir)
    store = ActivationStore(acts)
    fit = reconstruction_metrics(placed.sae, store, store.layer(layer), batch_size=4096)
    scored = _Report(config, placed, features, source)
    class_rows, class_figures = scored.class_latents() if features.class_names else ([], [])
    label_rows, label_figures = scored.label_latents()
    accuracy = None
    if scored.model_classes is not None:
        from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy

        accuracy = model_accuracy(AccuracyConfig(model=config.model, data=config.data, weights=config.weights,
                                                 pretrained=config.pretrained, device="cpu"), show_progress=False)
    result: dict[str, Any] = {"format": "traitlens.report", "version": 1, "model": config.model, "data": str(config.data),
              "layer": layer, "n_images": len(source), "accuracy": accuracy,
              "sae": {"width": placed.sae.config.width, "explained_variance": fit["explained_variance"], "l0": fit["l0"],
                      "dead": int(features.summary.dead)},
              "classes": class_rows, "labels": label_rows, "causal": scored.causal(class_rows)}
    result = _finite(result)
    _step(5, "report")
    figures = {"classes": class_figures, "labels": label_figures, "heatmaps": scored.heatmaps()}
    atomic_write_bytes(config.out / "report.html", _page(config, result, figures, features_index).encode())
    atomic_write_json(config.out / "report.json", result)
    lines = [f"{config.model} on {len(source):,} images of {config.data}, layer {layer}: SAE of {placed.sae.config.width:,} "
             f"latents, explained variance {fit['explained_variance']:.1%}, L0 {fit['l0']:.1f}"]
    if accuracy is not None:
        lines.append(f"accuracy {accuracy['accuracy']:.1%}")
    latents_of = {row["class"]: ", ".join(map(str, row["latents"])) for row in class_rows}
    for row in result["causal"]:
        lines.append(f"  {row['class']}: zeroing latents {latents_of[row['class']]} changes {number_text(row['change_rate'])} of "
                     f"{row['n_eligible']} correct predictions (matched random latents: {number_text(row['change_rate_random'])})")
    lines.append(f"Report: {config.out / 'report.html'}  (features: {features_index})")
    return "\n".join(lines)
