"""``traitlens calibrate``: one bias gamma for the classes a fine-tuning left out, learned without
images of those classes, and what it recovers (:mod:`traitlens.finetune.calibration_math`).

``--method gap`` takes the average logit gap on images of the fine-tuned classes (``--fit-data``,
best the fine-tuning images, of which a fine-tuned folder's own selection is taken: its classes,
``--n-per-class`` and seed; default ``--data``'s images of those classes). ``--method pcv``
(pseudo cross-validation) fine-tunes the base model again, with the same recipe, on half of the
fine-tuned classes (``--n-folds`` seeded halvings); on the images of the fine-tuned classes that a
fold did not train on, the other half plays the absent classes, and the gamma with the highest
accuracy over them is that fold's; their mean is applied. The folds are fine-tunings of their own
in ``--out/pcv/`` and resume like any.

The report, on ``--data`` (images of every class): accuracy on all images, on the fine-tuned and on
the absent classes' images (argmax over all classes), before and after, and for the base model
when the model is a fine-tuned folder; nearest-class-mean accuracy of the classifier's input
features (means from one half of the images, scored on the other); the seen-unseen accuracy curve
and its area (AUSUC), as numbers and a picture. When the model is a fine-tuned folder, ``--out`` is
that model with gamma applied: ``--model traitlens:OUT``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from traitlens.atomic import atomic_save_png, atomic_write_bytes, atomic_write_json
from traitlens.backbones import Backbone, load_backbone, parse_spec
from traitlens.checks import check_int
from traitlens.data import open_image_source
from traitlens.data.labelled import LabelledImages, load_labelled_images
from traitlens.distributed import Workers
from traitlens.finetune.calibration_math import (
    SeenUnseenCurve,
    ausuc,
    average_logit_gap,
    best_total_gamma,
    calibrated,
    seen_unseen_curve,
    split_accuracies,
)
from traitlens.finetune.classifier import find_classifier
from traitlens.finetune.errors import FinetuneError
from traitlens.finetune.saved import CALIBRATION, CALIBRATION_FORMAT, is_finetuned_folder, load_finetuned, read_finetune_json
from traitlens.finetune.training import BASE_WEIGHTS, CONFIG, WEIGHTS, FinetuneConfig, finetune, training_split
from traitlens.output_folder import claim_output_folder
from traitlens.sgd_recipe import RECIPE_FIELDS
from traitlens.tables import markdown_table, write_text
from traitlens.version import __version__

METHODS = ("gap", "pcv")
PICTURE = "seen-unseen.png"


@dataclass(frozen=True)
class CalibrateConfig:
    model: str
    data: Path
    method: str
    out: Path
    finetuned_classes: tuple[str, ...] | None = None
    """Default: those a fine-tuned folder records."""
    fit_data: Path | None = None
    weights: Path | None = None
    pretrained: bool = True
    n_folds: int = 3
    batch_size: int = 64
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FinetuneError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        check_int(self.n_folds, "--n-folds", FinetuneError)
        check_int(self.batch_size, "--batch-size", FinetuneError)


def finetuned_folder(spec: str) -> Path | None:
    """The folder of a ``traitlens:DIR`` fine-tuned model, else None."""
    parsed = parse_spec(spec)
    folder = Path(parsed.name).expanduser()
    return folder if parsed.provider == "traitlens" and folder.is_dir() and is_finetuned_folder(folder) else None


@torch.no_grad()
def _logits_and_features(backbone: Backbone, pixels_nchw: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n, classes) logits, and the (n, d) features the classifier reads (None without one)."""
    try:
        _, classifier = find_classifier(backbone)
    except FinetuneError:
        classifier = None
    features: list[torch.Tensor] = []
    handle = None if classifier is None else classifier.register_forward_hook(
        lambda _module, args, _output: features.append(args[0].detach().flatten(1).float().cpu()))
    try:
        logits = torch.cat([backbone.forward(batch.to(backbone.device)).float().cpu() for batch in pixels_nchw.split(batch_size)])
    finally:
        if handle is not None:
            handle.remove()
    return logits, torch.cat(features) if len(features) == math.ceil(len(pixels_nchw) / batch_size) else None


def ncm_accuracy(features_nd: torch.Tensor, labels_n: torch.Tensor, absent_c: torch.Tensor) -> dict[str, float | None]:
    """Nearest-class-mean accuracy of L2-normalized features (cosine to the class means), means
    from a seeded half of the images, scored on the other half; classes without a mean are left out."""
    order = torch.randperm(len(labels_n), generator=torch.Generator().manual_seed(0))
    fit, scored = order[: len(order) // 2], order[len(order) // 2:]
    unit_nd = torch.nn.functional.normalize(features_nd, dim=1)
    classes = sorted({int(label) for label in labels_n[fit]})
    means_kd = torch.nn.functional.normalize(torch.stack([unit_nd[fit][labels_n[fit] == c].mean(0) for c in classes]), dim=1)
    scores_nc = torch.full((len(scored), len(absent_c)), -torch.inf)
    scores_nc[:, classes] = unit_nd[scored] @ means_kd.T
    return asdict(split_accuracies(scores_nc, labels_n[scored], absent_c))


def _labels_in(images: LabelledImages, class_names: list[str], what: str, model: str) -> torch.Tensor:
    unknown = [name for name in images.class_names if name not in class_names]
    if unknown:
        raise FinetuneError(f"classes of {what} that {model} does not know: {', '.join(unknown[:5])}")
    return torch.tensor([class_names.index(name) for name in images.class_names])[images.labels_n]


def _pcv_gamma(config: CalibrateConfig, folder: Path, saved: dict[str, Any], fit_source: Path, images: LabelledImages,
               finetuned: tuple[str, ...], show_progress: bool) -> tuple[float, list[dict[str, Any]]]:
    """Pseudo cross-validation's gamma (see the module) and each fold's record; ``images`` are
    ``fit_source``'s, preprocessed as the base model (and so every fold) does."""
    training, base = saved["training"], saved["base"]
    recipe = {name: training[name] for name in RECIPE_FIELDS}
    folds = []
    for fold in range(config.n_folds):
        order = torch.randperm(len(finetuned), generator=torch.Generator().manual_seed(fold)).tolist()
        pseudo_finetuned = tuple(sorted(finetuned[i] for i in order[: math.ceil(len(finetuned) / 2)]))
        fold_config = FinetuneConfig(model=base["spec"], data=fit_source, method=saved["method"], out=config.out / "pcv" / f"fold-{fold}",
                                     classes=pseudo_finetuned, n_per_class=training["n_per_class"], options=saved["settings"],
                                     weights=folder / BASE_WEIGHTS if base["weights"] else None, pretrained=base["pretrained"],
                                     device=config.device, **recipe)
        finetune(fold_config, show_progress)
        model = load_finetuned(fold_config.out, f"traitlens:{fold_config.out}").to(Workers(0, 1).device(config.device))
        assert model.class_names is not None
        trained, _ = training_split(images.labels_n, images.class_names, pseudo_finetuned, fold_config.n_per_class,
                                    fold_config.val_fraction, fold_config.seed)
        labels_n = _labels_in(images, model.class_names, str(fit_source), fold_config.out.name)
        # the pseudo-validation images: of fine-tuned classes, not trained on by this fold
        unseen = torch.ones(len(labels_n), dtype=torch.bool)
        unseen[trained] = False
        unseen &= torch.tensor([model.class_names[label] in finetuned for label in labels_n.tolist()])
        if not bool(unseen.any()):
            raise FinetuneError(f"pcv fold {fold}: every image of the fine-tuned classes in {fit_source} was trained on; "
                                "give --fit-data with images the fine-tuning did not use")
        logits, _ = _logits_and_features(model, images.pixels_nchw[unseen], config.batch_size)
        pseudo_absent = torch.tensor([name not in pseudo_finetuned for name in model.class_names])
        curve = seen_unseen_curve(logits, labels_n[unseen], pseudo_absent)
        gamma = best_total_gamma(curve, labels_n[unseen], pseudo_absent)
        folds.append({"fold": fold, "pseudo_finetuned": list(pseudo_finetuned), "n_images": int(unseen.sum()), "gamma": gamma})
    return float(np.mean([fold["gamma"] for fold in folds])), folds


def _draw_curve(curve: SeenUnseenCurve, points: dict[str, tuple[float, float]], size: int = 400) -> Image.Image:
    """The seen-unseen curve (x: fine-tuned-class accuracy, y: absent-class accuracy), with the
    models as rings of their colours (a ring stays visible when another model sits on it)."""
    margin = 48
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    inner = size - 2 * margin

    def at(x: float, y: float) -> tuple[float, float]:
        return margin + x * inner, size - margin - y * inner

    draw.rectangle([at(0, 1), at(1, 0)], outline="#888888")
    for tick in (0.0, 0.5, 1.0):
        x, y = at(tick, 0)
        draw.text((x - 8, y + 4), f"{tick:g}", fill="#555555")
        x, y = at(0, tick)
        draw.text((x - 24, y - 6), f"{tick:g}", fill="#555555")
    draw.line([at(float(x), float(y)) for x, y in zip(curve.finetuned, curve.absent, strict=True)], fill="#1f77b4", width=2)
    colours = ["#d62728", "#2ca02c", "#9467bd"]
    for number, (name, (x, y)) in enumerate(points.items()):
        cx, cy = at(x, y)
        colour, radius = colours[number % len(colours)], 9 - 2 * number
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour, width=3)
        draw.text((margin + 8, margin + 8 + 14 * number), name, fill=colour)
    draw.text((margin, size - margin + 20), "accuracy on the fine-tuned classes", fill="black")
    draw.text((4, 8), "accuracy on the absent classes (up)", fill="black")
    return image


def _copy_model(folder: Path, out: Path) -> None:
    """The fine-tuned model's own files into ``out``, its ``finetune.json`` last: only then is
    ``out`` a model (calibrated, ``calibration.json`` being written before)."""
    for name in (WEIGHTS, BASE_WEIGHTS, CONFIG):
        if (folder / name).is_file():
            atomic_write_bytes(out / name, (folder / name).read_bytes())


def calibrate(config: CalibrateConfig, show_progress: bool = True) -> dict[str, Any]:
    """Learn gamma, write the report into ``config.out``; returns ``calibration.json``'s content."""
    folder = finetuned_folder(config.model)
    if folder is not None and (folder / CALIBRATION).is_file():
        raise FinetuneError(f"{folder} is calibrated already (its gamma would be counted twice); calibrate the fine-tuned folder "
                            "it came from")
    saved = read_finetune_json(folder) if folder is not None else None
    if config.finetuned_classes is None and saved is None:
        raise FinetuneError("name the fine-tuned classes (--finetuned-classes C1,C2,...); only a model folder written by "
                            "traitlens finetune records them")
    finetuned = tuple(dict.fromkeys(config.finetuned_classes or saved["finetuned_classes"]))  # type: ignore[index]
    if len(finetuned) < (3 if config.method == "pcv" else 2):
        raise FinetuneError(f"--method {config.method} needs at least {3 if config.method == 'pcv' else 2} fine-tuned classes "
                            f"(pcv splits them in two halves), got {len(finetuned)}")
    if config.method == "pcv" and (folder is None or saved is None):
        raise FinetuneError("pcv fine-tunes the base model again: give a model folder written by traitlens finetune "
                            "(--model traitlens:DIR)")
    backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    if backbone.class_names is None:
        raise FinetuneError(f"{config.model} has no class names; calibration needs a classifier with named classes")
    class_names = backbone.class_names
    unknown = [name for name in finetuned if name not in class_names]
    if unknown:
        raise FinetuneError(f"fine-tuned classes that {config.model} does not have: {', '.join(unknown[:5])}")
    absent_c = torch.tensor([name not in finetuned for name in class_names])
    if not bool(absent_c.any()):
        raise FinetuneError(f"every class of {config.model} was fine-tuned: there is no absent class to calibrate")
    device = Workers(0, 1).device(config.device)
    backbone.to(device)
    # every check a class name answers comes before --out is claimed and before the images load
    source = open_image_source(config.data)
    fit_source = config.fit_data or config.data
    fit_opened = source if config.fit_data is None else open_image_source(config.fit_data)
    for where, opened in ((config.data, source), (fit_source, fit_opened)):
        unknown = [name for name in opened.class_names or () if name not in class_names]
        if unknown:
            raise FinetuneError(f"classes of {where} that {config.model} does not know: {', '.join(unknown[:5])}")
    if {name in finetuned for name in source.class_names or ()} != {True, False}:
        raise FinetuneError(f"{config.data} must hold images of fine-tuned and of absent classes to score the calibration "
                            f"(its classes: {', '.join((source.class_names or ['none'])[:8])})")
    if not any(name in finetuned for name in fit_opened.class_names or ()):
        raise FinetuneError(f"{fit_source} has no image of a fine-tuned class to learn gamma from")
    # one-shot: an earlier calibration in --out is replaced only with --overwrite (the pcv folds inside resume)
    claim_output_folder(config.out, "calibrate", overwrite=config.overwrite, own_files=(CALIBRATION,), error=FinetuneError)
    images = load_labelled_images(source, backbone.preprocess, show_progress)
    labels_n = _labels_in(images, class_names, str(config.data), config.model)
    fit_images = images if config.fit_data is None else load_labelled_images(fit_opened, backbone.preprocess, show_progress)
    fit_labels_n = labels_n if config.fit_data is None else _labels_in(fit_images, class_names, str(config.fit_data), config.model)
    fit_seen_n = ~absent_c[fit_labels_n]  # gamma never sees an image of an absent class
    if saved is not None and config.fit_data is not None:  # the images the fine-tuning itself picked from them
        recorded = saved["training"]
        picked, _ = training_split(fit_images.labels_n, fit_images.class_names,
                                   tuple(name for name in finetuned if name in fit_images.class_names) or None,
                                   recorded["n_per_class"], recorded["val_fraction"], recorded["seed"])
        fit_seen_n &= torch.zeros(len(fit_seen_n), dtype=torch.bool).index_fill_(0, picked, True)
    logits, features = _logits_and_features(backbone, images.pixels_nchw, config.batch_size)
    folds: list[dict[str, Any]] = []
    if config.method == "gap":
        fit_logits = logits if config.fit_data is None else _logits_and_features(backbone, fit_images.pixels_nchw, config.batch_size)[0]
        gamma = average_logit_gap(fit_logits[fit_seen_n], fit_labels_n[fit_seen_n], absent_c)
    else:
        assert folder is not None and saved is not None
        gamma, folds = _pcv_gamma(config, folder, saved, fit_source, fit_images, finetuned, show_progress)
    curve = seen_unseen_curve(logits, labels_n, absent_c)
    metrics: dict[str, Any] = {"before": asdict(split_accuracies(logits, labels_n, absent_c)),
                               "after": asdict(split_accuracies(calibrated(logits, absent_c, gamma), labels_n, absent_c))}
    if features is not None:
        metrics["ncm"] = ncm_accuracy(features, labels_n, absent_c)
    if saved is not None and folder is not None and not saved["new_classifier"]:
        base = load_backbone(saved["base"]["spec"], weights=folder / BASE_WEIGHTS if saved["base"]["weights"] else None,
                             pretrained=saved["base"]["pretrained"]).to(device)
        base_logits, base_features = _logits_and_features(base, images.pixels_nchw, config.batch_size)
        metrics["base"] = asdict(split_accuracies(base_logits, labels_n, absent_c))
        if base_features is not None:
            metrics["base_ncm"] = ncm_accuracy(base_features, labels_n, absent_c)
    metrics["recovered"] = _recovered(metrics)
    points = {"fine-tuned": (metrics["before"]["finetuned"], metrics["before"]["absent"]),
              f"calibrated (gamma {gamma:.2f})": (metrics["after"]["finetuned"], metrics["after"]["absent"])}
    if "base" in metrics:
        points["base model"] = (metrics["base"]["finetuned"], metrics["base"]["absent"])
    atomic_save_png(config.out / PICTURE, _draw_curve(curve, points))
    result = {"format": CALIBRATION_FORMAT, "version": 1, "model": config.model, "data": str(config.data), "fit_data": str(fit_source),
              "method": config.method, "gamma": gamma, "class_names": class_names, "finetuned_classes": list(finetuned),
              "absent_classes": [name for name, absent in zip(class_names, absent_c.tolist(), strict=True) if absent],
              "n_images": len(labels_n), "metrics": metrics, "ausuc": ausuc(curve), "folds": folds,
              "curve": {"gamma": curve.gammas.tolist(), "finetuned": curve.finetuned.tolist(), "absent": curve.absent.tolist()},
              "software": {"traitlens": __version__}}
    write_text(config.out / "calibration.md", _markdown(result))
    atomic_write_json(config.out / CALIBRATION, result)
    if folder is not None:
        _copy_model(folder, config.out)
    return result


def _recovered(metrics: dict[str, Any]) -> float | None:
    """The share of the absent-class accuracy lost by fine-tuning that calibration brings back."""
    base = metrics.get("base")
    if base is None or base["absent"] is None or metrics["before"]["absent"] is None:
        return None
    lost = base["absent"] - metrics["before"]["absent"]
    return None if lost <= 0 else (metrics["after"]["absent"] - metrics["before"]["absent"]) / lost


def _markdown(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    rows = [{"model": name, **metrics[key]} for name, key in (("base", "base"), ("fine-tuned", "before"),
                                                               (f"calibrated (gamma {result['gamma']:.3f})", "after")) if key in metrics]
    rows += [{"model": f"NCM features, {name}", **metrics[key]} for name, key in (("base", "base_ncm"), ("fine-tuned", "ncm"))
             if key in metrics]
    recovered = metrics["recovered"]
    return "\n".join([markdown_table(rows, ["model", "all", "finetuned", "absent"]), "",
                      f"AUSUC {result['ausuc']:.3f}; absent-class accuracy lost by fine-tuning and recovered: "
                      f"{'n/a' if recovered is None else format(recovered, '.0%')}", ""])
