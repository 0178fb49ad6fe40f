"""``traitlens heads train``: a head of any registered kind trained on a frozen backbone.

The recipe defaults are Prompt-CAM's (SGD with momentum 0.9, learning rate 5e-3, weight decay
1e-3, batch 16, linear warm-up then cosine decay), used for every kind so their accuracies compare
on the same images, split and optimizer. Deterministic: the head's initialization, the split and
every epoch's order are functions of the seed, so a run killed and started again continues from
its last epoch checkpoint to the weights of an uninterrupted run. Only the head's parameters are
trained; the model's weights are checked unchanged by fingerprint wherever the head is used.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlens.backbones import Backbone, load_backbone
from traitlens.backbones.weights import fixed_seed
from traitlens.checkpoints import CHECKPOINT, EpochCheckpoints, claim_training_folder
from traitlens.cli_args import option_name
from traitlens.data import open_image_source
from traitlens.data.labelled import LabelledImages, load_labelled_images
from traitlens.distributed import Workers
from traitlens.heads.errors import HeadError
from traitlens.heads.linear_head import CONFIG
from traitlens.heads.trainable import TrainableHead, head_kind
from traitlens.sgd_recipe import SGDRecipe, train_epochs
from traitlens.splits import train_val_split
from traitlens.version import __version__

COMMAND = "heads train"


@dataclass(frozen=True)
class HeadTrainConfig(SGDRecipe):
    """What ``heads train`` runs. ``options`` are the kind's own (``pooling`` for linear,
    ``decoder_layers``/``decoder_width``/``decoder_heads`` for intr); ``layer`` is the last one
    the head reads (default: the model's last)."""

    kind: str
    model: str
    data: Path
    out: Path
    layer: str | None = None
    weights: Path | None = None
    pretrained: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.check_recipe(HeadError)
        kind = head_kind(self.kind)
        foreign = sorted(name for name in self.options if name not in kind.options)
        if foreign:
            accepted = ", ".join(option_name(name) for name in kind.options) or "none"
            raise HeadError(f"{', '.join(option_name(name) for name in foreign)} does not apply to --kind {self.kind} "
                            f"(its own options: {accepted})")


@torch.no_grad()
def head_accuracy(head: TrainableHead, backbone: Backbone, images: LabelledImages, indices: torch.Tensor,
                  batch_size: int = 64) -> float | None:
    """Top-1 accuracy of the head on ``indices`` of ``images`` (None for none)."""
    if not len(indices):
        return None
    head.eval()
    correct = 0
    for batch in indices.split(batch_size):
        logits_bc = head.logits(backbone, images.pixels_nchw[batch].to(backbone.device))
        correct += int((logits_bc.argmax(1).cpu() == images.labels_n[batch]).sum())
    return correct / len(indices)


def train_head(config: HeadTrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or keep) the head ``config`` describes; returns its ``head.json``."""
    kind = head_kind(config.kind)
    backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    layer = backbone.resolve_layer(config.layer if config.layer is not None else -1)
    source = open_image_source(config.data)
    settings = kind.settings_from_options(config.options)
    kind.build(backbone, ("a", "b"), layer, settings)  # refuses settings or a model it cannot apply to before the images load
    images = load_labelled_images(source, backbone.preprocess, show_progress)
    class_names = tuple(images.class_names)
    with fixed_seed(config.seed):
        head = kind.build(backbone, class_names, layer, settings)
    model = {"spec": backbone.spec, "weights": None if config.weights is None else str(config.weights),
             "pretrained": config.pretrained, "weights_fingerprint": backbone.weights_fingerprint()}
    identity = config.identity() | {"layer_used": layer, "model_record": model, "class_names": list(class_names),
                                    "dataset_fingerprint": source.fingerprint()}
    # claimed once the request is known to be good: --overwrite must not empty a folder for a bad one
    if claim_training_folder(config.out, COMMAND, CONFIG, identity, "a head", overwrite=config.overwrite, error=HeadError):
        return json.loads((config.out / CONFIG).read_text())
    device = Workers(0, 1).device(config.device)
    backbone.to(device)
    head.to(device)
    for parameter in backbone.model.parameters():  # frozen: gradients only for the head
        parameter.requires_grad_(False)
    train_idx, val_idx = train_val_split(len(images.labels_n), config.val_fraction, config.seed)
    checkpoints = EpochCheckpoints(config.out / CHECKPOINT, identity, HeadError)
    start = time.perf_counter()
    head.train()
    train_epochs(config, head.parameters(), head, checkpoints,
                 lambda batch: head.training_logits(backbone, images.pixels_nchw[batch].to(device)), images.labels_n, train_idx,
                 HeadError, config.kind, show_progress)
    metrics = {"train_accuracy": head_accuracy(head, backbone, images, train_idx),
               "val_accuracy": head_accuracy(head, backbone, images, val_idx),
               "n_train": len(train_idx), "n_val": len(val_idx), "train_seconds_this_run": round(time.perf_counter() - start, 1)}
    head.save(config.out, model, {"training": identity, "metrics": metrics, "software": {"traitlens": __version__}})
    checkpoints.remove()
    return json.loads((config.out / CONFIG).read_text())
