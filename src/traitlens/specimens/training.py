"""``traitlens specimens train-model``: a small ViT or CNN trained from scratch on any class folder.

Deterministic: the initialization, the train/validation split and every epoch's order are
functions of the seed, and nothing else draws random numbers, so a run killed and started again
continues from its last epoch checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.weights import fixed_seed
from traitlens.checkpoints import CHECKPOINT, EpochCheckpoints, claim_training_folder
from traitlens.checks import check_float, check_int
from traitlens.cli_args import option_name
from traitlens.data import open_image_source
from traitlens.data.labelled import load_labelled_images
from traitlens.errors import TraitlensError
from traitlens.lr_schedule import warmup_cosine
from traitlens.specimens.distillation import FeatureHint, TeacherConfig, load_teacher, patch_grid
from traitlens.specimens.model_dir import (
    CONFIG,
    CNNShape,
    ModelShape,
    SavedModel,
    ViTShape,
    save_model_dir,
)
from traitlens.splits import train_val_split

log = logging.getLogger(__name__)

COMMAND = "specimens train-model"


class ModelTrainingError(TraitlensError):
    """A classifier cannot be trained as asked."""


@dataclass(frozen=True)
class TrainModelConfig:
    data: Path
    out: Path
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    shape: ModelShape = field(default_factory=ViTShape)
    teacher: TeacherConfig | None = None
    """Feature distillation from a teacher model's patch tokens (:mod:`traitlens.specimens.distillation`)."""
    overwrite: bool = False
    """Start ``out`` again from scratch instead of resuming or keeping its model."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            check_int(getattr(self, name), option_name(name), ModelTrainingError)
        check_int(self.seed, "--seed", ModelTrainingError, minimum=0)
        check_float(self.lr, "--lr", ModelTrainingError, above=True)
        check_float(self.weight_decay, "weight_decay", ModelTrainingError)
        check_float(self.warmup_epochs, "warmup_epochs", ModelTrainingError)
        check_float(self.label_smoothing, "label_smoothing", ModelTrainingError, below=1)
        check_float(self.val_fraction, "--val-fraction", ModelTrainingError, below=1)
        if not isinstance(self.shape, (ViTShape, CNNShape)):
            raise ModelTrainingError(f"shape must be a ViTShape or a CNNShape, got {self.shape!r}")
        if self.teacher is not None and not isinstance(self.teacher, TeacherConfig):
            raise ModelTrainingError(f"teacher must be a TeacherConfig, got {self.teacher!r}")

    def to_dict(self) -> dict[str, Any]:
        """What fixes the weights (``overwrite`` does not): a checkpoint or a finished model is
        continued or kept only for the same."""
        data = asdict(self)
        data["data"], data["out"] = str(self.data), str(self.out)
        del data["overwrite"]
        if self.teacher is None:  # as a model trained before distillation existed records it
            del data["teacher"]
        return json.loads(json.dumps(data))  # as read back from JSON (tuples become lists)


def learning_rate(config: TrainModelConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    return warmup_cosine(config.lr, step, round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch)


@torch.no_grad()
def accuracy(model: nn.Module, pixels_nchw: torch.Tensor, labels_n: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum(int((model(batch).argmax(-1) == labels).sum())
                  for batch, labels in zip(pixels_nchw.split(batch_size), labels_n.split(batch_size), strict=True))
    return correct / max(len(labels_n), 1)


def train_model(config: TrainModelConfig, show_progress: bool = True) -> Path:
    """Train (or resume training) and save the model directory ``config.out``; a finished model
    of the same config is left as it is."""
    teacher = None if config.teacher is None else (config.teacher, load_teacher(config.teacher))  # checked before anything is written
    if claim_training_folder(config.out, COMMAND, CONFIG, config.to_dict(), "a model",
                             overwrite=config.overwrite, error=ModelTrainingError):
        return config.out
    preprocess = config.shape.preprocess()
    images = load_labelled_images(open_image_source(config.data), preprocess, show_progress)
    train_idx, val_idx = train_val_split(len(images.labels_n), config.val_fraction, config.seed)
    saved = SavedModel(config.shape, tuple(images.class_names))
    with fixed_seed(config.seed):
        model = saved.build()
        hint = None if teacher is None else _feature_hint(*teacher, model, preprocess)
    trained = model if hint is None else nn.ModuleDict({"model": model, "hint": hint.project})  # the teacher stays as it is
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    teacher_identity = {} if hint is None else {"teacher": hint.identity()}
    checkpoints = EpochCheckpoints(config.out / CHECKPOINT, config.to_dict() | {"class_names": images.class_names} | teacher_identity,
                                   ModelTrainingError)
    first_epoch = checkpoints.load(trained, optimizer, config.epochs)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    start = time.perf_counter()
    for epoch in range(first_epoch, config.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))]
        batches = order.split(config.batch_size)
        progress = tqdm(batches, unit="batch", desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show_progress)
        for step_in_epoch, batch in enumerate(progress):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + step_in_epoch, steps_per_epoch)
            pixels_nchw, labels_n = images.pixels_nchw[batch], images.labels_n[batch]
            if hint is None:
                loss = loss_fn(model(pixels_nchw), labels_n)
            else:
                with hint.student.capture(hint.student_layer, detach=False) as captured:
                    logits = model(pixels_nchw)
                patches = patch_grid(hint.student, hint.student_layer, captured[hint.student_layer])
                loss = loss_fn(logits, labels_n) + hint.config.weight * hint.loss(patches, hint.targets(pixels_nchw))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        checkpoints.save(epoch + 1, trained, optimizer)
    model.eval()
    metrics = {
        "train_accuracy": accuracy(model, images.pixels_nchw[train_idx], images.labels_n[train_idx]),
        "val_accuracy": accuracy(model, images.pixels_nchw[val_idx], images.labels_n[val_idx]) if len(val_idx) else None,
        "n_train": len(train_idx), "n_val": len(val_idx), "train_seconds_this_run": round(time.perf_counter() - start, 1),
    }
    save_model_dir(config.out, model, SavedModel(config.shape, tuple(images.class_names),
                                                 {"training": config.to_dict(), "metrics": metrics, "preprocess": preprocess.to_dict()}
                                                 | teacher_identity))
    checkpoints.remove()
    return config.out


def _feature_hint(config: TeacherConfig, teacher: Backbone, model: nn.Module, preprocess: Preprocess) -> FeatureHint:
    """The hint for ``model`` (its layers probed in eval mode, so no batch-norm statistics move)."""
    from traitlens.backbones.timm_provider import timm_backbone

    model.eval()
    return FeatureHint(config, teacher, timm_backbone("the student", model, preprocess, None))
