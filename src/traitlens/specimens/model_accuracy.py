"""Top-1 accuracy of any classifier backbone on a labelled image source (``specimens accuracy``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from traitlens.atomic import atomic_write_json
from traitlens.backbones import Backbone
from traitlens.checks import check_int
from traitlens.data import open_image_source
from traitlens.data.labelled import load_labelled_images
from traitlens.distributed import Workers
from traitlens.errors import DataError
from traitlens.heads.attach import load_model_with_head
from traitlens.output_folder import claim_output_folder

RESULT_FILE = "accuracy.json"


@dataclass(frozen=True)
class AccuracyConfig:
    model: str
    data: Path
    weights: Path | None = None
    pretrained: bool = True
    head: Path | None = None
    """A head folder whose classes replace the model's own."""
    batch_size: int = 256
    device: str = "auto"
    out: Path | None = None
    """A folder for ``accuracy.json`` (a finished one is replaced only with ``overwrite``)."""
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_int(self.batch_size, "--batch-size", DataError)


@torch.no_grad()
def model_accuracy(config: AccuracyConfig, show_progress: bool = True, backbone: Backbone | None = None) -> dict[str, Any]:
    """Accuracy overall and per class; the source's class names must be the model's. ``backbone``:
    the model with its head, already loaded (:func:`load_model_with_head`)."""
    if backbone is None:
        backbone = load_model_with_head(config.model, config.weights, config.pretrained, config.head)
    backbone.to(Workers(0, 1).device(config.device))
    if backbone.class_names is None:
        raise DataError(f"{config.model} has no classification head with class names")
    source = open_image_source(config.data)
    if config.out is not None:
        claim_output_folder(config.out, "specimens accuracy", overwrite=config.overwrite, own_files=(RESULT_FILE,), error=DataError)
    images = load_labelled_images(source, backbone.preprocess, show_progress)
    unknown = sorted(set(images.class_names) - set(backbone.class_names))
    if unknown:
        raise DataError(f"classes of {config.data} that {config.model} does not know: {', '.join(unknown[:5])}")
    model_index = torch.tensor([backbone.class_names.index(name) for name in images.class_names])
    targets_n = model_index[images.labels_n]
    predictions_n = torch.cat([backbone.forward(batch.to(backbone.device)).argmax(-1).cpu()
                               for batch in images.pixels_nchw.split(config.batch_size)])
    correct_n = predictions_n == targets_n
    per_class = {name: float(correct_n[images.labels_n == i].double().mean()) for i, name in enumerate(images.class_names)
                 if bool((images.labels_n == i).any())}
    result = {"model": config.model, **({"head": str(config.head)} if config.head is not None else {}),
              "data": str(config.data), "n_images": len(correct_n),
              "accuracy": float(correct_n.double().mean()), "per_class": per_class}
    if config.out is not None:
        atomic_write_json(config.out / RESULT_FILE, result)
    return result
