"""``traitlens specimens train-model``: a small ViT or CNN trained from scratch on any class folder.

Deterministic: the initialization, the train/validation split and every epoch's order are
functions of the seed, and nothing else draws random numbers, so a run killed and started again
continues from its last epoch checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.weights import fixed_seed
from traitlens.checks import check_float, check_int
from traitlens.cli_args import option_name
from traitlens.data import ImageSource, UnreadableImageError, open_image_source
from traitlens.errors import DataError, TraitlensError
from traitlens.optim_state import load_optimizer_tensors, optimizer_tensors
from traitlens.output_folder import claim_output_folder
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

CHECKPOINT = "checkpoint"
COMMAND = "specimens train-model"
_CHECKPOINT_WEIGHTS = re.compile(r"epoch-\d{4,}\.safetensors")


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

    def to_dict(self) -> dict[str, Any]:
        """What fixes the weights (``overwrite`` does not): a checkpoint or a finished model is
        continued or kept only for the same."""
        data = asdict(self)
        data["data"], data["out"] = str(self.data), str(self.out)
        del data["overwrite"]
        return json.loads(json.dumps(data))  # as read back from JSON (tuples become lists)


@dataclass
class LabelledImages:
    pixels_nchw: torch.Tensor
    labels_n: torch.Tensor
    class_names: list[str]


def load_labelled_images(source: ImageSource, preprocess: Preprocess, show_progress: bool = False) -> LabelledImages:
    """Every readable, labelled image of ``source`` preprocessed into memory (unreadable ones are
    skipped with a warning, as extraction does)."""
    if source.class_names is None or any(record.label is None for record in source.records):
        raise DataError(f"{source.root} has unlabelled images; train-model needs a class folder (one subfolder per class)")
    if len(source.class_names) < 2:
        raise DataError(f"{source.root} has only one class; a classifier needs at least two")
    index = {name: i for i, name in enumerate(source.class_names)}
    pixels, labels = [], []
    for i in tqdm(range(len(source)), unit="img", desc="load", disable=not show_progress):
        try:
            pixels.append(preprocess.image(source.load_image(i)))
        except UnreadableImageError as error:
            log.warning("skipping %s", error)
            continue
        labels.append(index[str(source.records[i].label)])
    return LabelledImages(torch.stack(pixels), torch.tensor(labels), list(source.class_names))


def learning_rate(config: TrainModelConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def accuracy(model: nn.Module, pixels_nchw: torch.Tensor, labels_n: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum(int((model(batch).argmax(-1) == labels).sum())
                  for batch, labels in zip(pixels_nchw.split(batch_size), labels_n.split(batch_size), strict=True))
    return correct / max(len(labels_n), 1)


class _Checkpoints:
    """One checkpoint per finished epoch: weights and AdamW state (safetensors) + JSON."""

    def __init__(self, out: Path, identity: dict[str, Any]) -> None:
        self.folder = out / CHECKPOINT
        self.identity = identity

    def save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        weights = self.folder / f"epoch-{epoch:04d}.safetensors"
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | optimizer_tensors(optimizer, "optim")
        save_tensors(weights, tensors)
        atomic_write_json(self.folder / "state.json", {"epoch": epoch, "weights": weights.name, "config": self.identity})
        for old in self.folder.glob("epoch-*.safetensors"):
            if old != weights:
                old.unlink()

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """The number of finished epochs restored (0 when there is no checkpoint)."""
        path = self.folder / "state.json"
        if not path.is_file():
            return 0
        try:
            state = json.loads(path.read_text())
            epoch, weights, identity = state["epoch"], state["weights"], state["config"]
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ModelTrainingError(f"damaged checkpoint {path}: {str(error).splitlines()[0][:200]}") from error
        if identity != self.identity:
            raise ModelTrainingError(f"the checkpoint in {self.folder} is from a different configuration; use another --out "
                                     "(or --overwrite to start again)")
        # the weights file is named by the checkpoint itself, so it must be one of its own files
        if not isinstance(weights, str) or _CHECKPOINT_WEIGHTS.fullmatch(weights) is None \
                or isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= identity["epochs"]:
            raise ModelTrainingError(f"damaged checkpoint {path}: epoch {epoch!r} and weights {weights!r}")
        try:
            tensors = load_file(str(self.folder / weights))
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            load_optimizer_tensors(optimizer, "optim", tensors)
        except Exception as error:  # safetensors and load_state_dict raise several types for damaged files
            raise ModelTrainingError(f"damaged checkpoint in {self.folder}: {str(error).splitlines()[0][:200]}") from error
        return epoch

    def remove(self) -> None:
        for file in self.folder.glob("*"):
            file.unlink()
        self.folder.rmdir()


def _claim(config: TrainModelConfig) -> bool:
    """Claim ``config.out`` (resumable); True when it already holds the model ``config`` trains."""
    claim_output_folder(config.out, COMMAND, overwrite=config.overwrite, resumable=True,
                        own_files=(CONFIG, f"{CHECKPOINT}/state.json"), error=ModelTrainingError)
    path = config.out / CONFIG
    if not path.is_file():
        return False
    try:
        trained = json.loads(path.read_text()).get("training")
    except (OSError, ValueError, AttributeError):
        trained = None
    if trained != config.to_dict():
        raise ModelTrainingError(f"{config.out} already holds a model trained with other settings; choose another --out, "
                                 "or pass --overwrite to replace it")
    if (config.out / CHECKPOINT).is_dir():  # a run killed after saving the model, before removing its checkpoint
        _Checkpoints(config.out, {}).remove()
    return True


def train_model(config: TrainModelConfig, show_progress: bool = True) -> Path:
    """Train (or resume training) and save the model directory ``config.out``; a finished model
    of the same config is left as it is."""
    if _claim(config):
        return config.out
    preprocess = config.shape.preprocess()
    images = load_labelled_images(open_image_source(config.data), preprocess, show_progress)
    train_idx, val_idx = train_val_split(len(images.labels_n), config.val_fraction, config.seed)
    saved = SavedModel(config.shape, tuple(images.class_names))
    with fixed_seed(config.seed):
        model = saved.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    checkpoints = _Checkpoints(config.out, config.to_dict() | {"class_names": images.class_names})
    first_epoch = checkpoints.load(model, optimizer)
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
            loss = loss_fn(model(images.pixels_nchw[batch]), images.labels_n[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        checkpoints.save(epoch + 1, model, optimizer)
    model.eval()
    metrics = {
        "train_accuracy": accuracy(model, images.pixels_nchw[train_idx], images.labels_n[train_idx]),
        "val_accuracy": accuracy(model, images.pixels_nchw[val_idx], images.labels_n[val_idx]) if len(val_idx) else None,
        "n_train": len(train_idx), "n_val": len(val_idx), "train_seconds_this_run": round(time.perf_counter() - start, 1),
    }
    save_model_dir(config.out, model, SavedModel(config.shape, tuple(images.class_names),
                                                 {"training": config.to_dict(), "metrics": metrics, "preprocess": preprocess.to_dict()}))
    checkpoints.remove()
    return config.out
