"""``traitlens finetune``: adapt a classifier to labelled images by one of the registered methods
(:mod:`traitlens.finetune.methods`), keeping only what was trained.

The classifier is trained by every method. When the images' classes are among the model's, the
model's own classifier is kept (all its classes: the others are the *absent* classes that
``traitlens calibrate`` recovers); otherwise a new one replaces it, for the images' classes.
``--classes`` fine-tunes on some classes of the images only, ``--n-per-class`` on that many images
of each (the first of a seeded order: few-shot runs). The model runs in eval mode throughout
(dropout off, batch-norm statistics frozen), as parameter-efficient transfer does with small batches.

The recipe is :mod:`traitlens.sgd_recipe`'s; the run resumes to the same weights after a kill. The
folder holds ``finetuned.safetensors`` (the trained parameters only), ``finetune.json`` (the base
model, method, settings, classes and metrics) and, when the base was loaded from ``--weights``, a
copy of those weights (``base.safetensors``): the folder is a model, ``--model traitlens:DIR``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.backbones import Backbone, load_backbone, parse_spec
from traitlens.backbones.weights import fixed_seed, read_state_dict
from traitlens.checkpoints import CHECKPOINT, EpochCheckpoints, claim_training_folder
from traitlens.checks import check_int
from traitlens.data import open_image_source
from traitlens.data.labelled import load_labelled_images
from traitlens.distributed import Workers
from traitlens.finetune.classifier import find_classifier, replace_classifier
from traitlens.finetune.errors import FinetuneError
from traitlens.finetune.methods import FinetuneMethod, finetune_method
from traitlens.finetune.trained import TrainedParameters
from traitlens.sgd_recipe import SGDRecipe, train_epochs
from traitlens.splits import train_val_split
from traitlens.version import __version__

COMMAND = "finetune"
CONFIG = "finetune.json"
WEIGHTS = "finetuned.safetensors"
BASE_WEIGHTS = "base.safetensors"
FORMAT = "traitlens.finetune"
VERSION = 1


@dataclass(frozen=True)
class FinetuneConfig(SGDRecipe):
    model: str
    data: Path
    method: str
    out: Path
    classes: tuple[str, ...] | None = None
    """Fine-tune on these classes of ``data`` only (default: all of them)."""
    n_per_class: int | None = None
    """At most this many images of each class (default: all)."""
    options: dict[str, int] = field(default_factory=dict)
    """The method's own settings (``prompt_length``, ``lora_rank``, ``lora_alpha``, ``adapter_width``)."""
    weights: Path | None = None
    pretrained: bool = True
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.check_recipe(FinetuneError)
        # an unknown method or a foreign option is one line now; defaults spelled out or not are the same run
        object.__setattr__(self, "options", finetune_method(self.method, self.options).settings)
        if self.n_per_class is not None:
            check_int(self.n_per_class, "--n-per-class", FinetuneError)
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise FinetuneError("--classes needs at least two distinct class names")
        check_base_spec(self.model)


def check_base_spec(spec: str) -> None:
    """A base model must be named, not found at a local path: the folder records it, and paths read
    from an artifact must stay inside the artifact (local weights travel as ``--weights``, copied in)."""
    name = parse_spec(spec).name
    local = name.startswith(("/", ".", "~", "local-dir:")) or Path(name).expanduser().exists()
    if local:
        raise FinetuneError(f"the base model {spec} is read from a local path; fine-tune an embedded traitlens model or a "
                            "library model, with local weights given by --weights (they are copied into --out)")


def training_split(labels_n: torch.Tensor, class_names: list[str], classes: tuple[str, ...] | None, n_per_class: int | None,
                   val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of the images a fine-tuning trains and validates on: those of ``classes``, at
    most ``n_per_class`` each (the first of a seeded order), split by ``val_fraction``."""
    wanted = [class_names.index(name) for name in (classes or class_names)]
    order = torch.randperm(len(labels_n), generator=torch.Generator().manual_seed(seed))
    chosen = []
    for label in wanted:
        of_class = order[labels_n[order] == label]
        chosen.append(of_class if n_per_class is None else of_class[:n_per_class])
    selected = torch.cat(chosen).sort().values
    train, val = train_val_split(len(selected), val_fraction, seed)
    return selected[train], selected[val]


@torch.no_grad()
def accuracy(backbone: Backbone, pixels_nchw: torch.Tensor, targets_n: torch.Tensor, batch_size: int = 64) -> float | None:
    """Top-1 accuracy of the model's logits against ``targets_n`` (None for no images)."""
    if not len(targets_n):
        return None
    predictions = torch.cat([backbone.forward(batch.to(backbone.device)).argmax(1).cpu() for batch in pixels_nchw.split(batch_size)])
    return float((predictions == targets_n).float().mean())


def prepare_model(backbone: Backbone, method: FinetuneMethod, new_classes: tuple[str, ...] | None, seed: int) -> str:
    """Change ``backbone`` for ``method`` (and a new classifier for ``new_classes``) with the
    seed's initialization; returns the classifier's name. The same call rebuilds a saved model."""
    classifier, _ = find_classifier(backbone)
    with fixed_seed(seed):
        if new_classes is not None:
            replace_classifier(backbone, classifier, len(new_classes))
        method.prepare(backbone)
    return classifier


def finetune(config: FinetuneConfig, show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune (or resume, or keep) the model ``config`` describes; returns its ``finetune.json``."""
    method = finetune_method(config.method, config.options)
    backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    base_fingerprint = backbone.weights_fingerprint()
    source = open_image_source(config.data)
    data_classes = tuple(source.class_names or ())
    if len(data_classes) < 2:
        raise FinetuneError(f"{config.data} has no two classes to fine-tune on (a class folder: one subfolder per class)")
    unknown = [name for name in config.classes or () if name not in data_classes]
    if unknown:
        raise FinetuneError(f"--classes names classes the images do not have: {', '.join(unknown[:5])} "
                            f"(they have {', '.join(data_classes[:8])}{', ...' if len(data_classes) > 8 else ''})")
    model_classes = backbone.class_names
    keeps_head = model_classes is not None and set(data_classes) <= set(model_classes)
    class_names = tuple(model_classes) if keeps_head and model_classes is not None else data_classes
    # the model is changed before the images load: a method or model that does not fit is refused first
    classifier = prepare_model(backbone, method, None if keeps_head else class_names, config.seed)
    images = load_labelled_images(source, backbone.preprocess, show_progress)
    finetuned = tuple(config.classes or images.class_names)
    to_model = torch.tensor([class_names.index(name) for name in images.class_names])
    labels_n = to_model[images.labels_n]
    identity = config.identity() | {"base_weights_fingerprint": base_fingerprint, "dataset_fingerprint": source.fingerprint()}
    # claimed once the request is known to be good: --overwrite must not empty a folder for a bad one
    if claim_training_folder(config.out, COMMAND, CONFIG, identity, "a fine-tuned model", overwrite=config.overwrite,
                             error=FinetuneError):
        return json.loads((config.out / CONFIG).read_text())
    trained = TrainedParameters(backbone.model, lambda name: name.startswith(f"{classifier}.") or method.trains(name))
    device = Workers(0, 1).device(config.device)
    backbone.to(device)
    train_idx, val_idx = training_split(images.labels_n, images.class_names, config.classes, config.n_per_class,
                                        config.val_fraction, config.seed)
    start = time.perf_counter()
    train_epochs(config, trained.parameters(), trained, EpochCheckpoints(config.out / CHECKPOINT, identity, FinetuneError),
                 lambda batch: backbone.forward(images.pixels_nchw[batch].to(device)), labels_n, train_idx, FinetuneError,
                 config.method, show_progress)
    trained.freeze()
    metrics = {"train_accuracy": accuracy(backbone, images.pixels_nchw[train_idx], labels_n[train_idx]),
               "val_accuracy": accuracy(backbone, images.pixels_nchw[val_idx], labels_n[val_idx]),
               "n_train": len(train_idx), "n_val": len(val_idx), "n_trained_parameters": trained.count(),
               "n_model_parameters": sum(parameter.numel() for parameter in backbone.model.parameters()),
               "train_seconds_this_run": round(time.perf_counter() - start, 1)}
    config.out.mkdir(parents=True, exist_ok=True)
    if config.weights is not None:  # the folder is a model on its own: the base weights travel with it
        save_tensors(config.out / BASE_WEIGHTS, {name: tensor.contiguous() for name, tensor in read_state_dict(config.weights).items()})
    save_tensors(config.out / WEIGHTS, trained.tensors())
    atomic_write_json(config.out / CONFIG, {
        "format": FORMAT, "version": VERSION, "method": config.method, "settings": method.settings,
        "base": {"spec": config.model, "pretrained": config.pretrained, "weights": BASE_WEIGHTS if config.weights else None,
                 "weights_fingerprint": base_fingerprint},
        "classifier": classifier, "new_classifier": not keeps_head, "class_names": list(class_names),
        "finetuned_classes": list(finetuned), "seed": config.seed, "metrics": metrics, "training": identity,
        "software": {"traitlens": __version__}})
    EpochCheckpoints(config.out / CHECKPOINT, identity).remove()
    return json.loads((config.out / CONFIG).read_text())
