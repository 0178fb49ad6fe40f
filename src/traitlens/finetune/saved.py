"""A fine-tuned folder loaded as a model (``--model traitlens:DIR``): the base model rebuilt from
its recorded spec, changed by the recorded method with the recorded seed, then the trained
parameters put in. Every field is checked before use; the only files read are the folder's own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from traitlens.backbones import Backbone, load_backbone
from traitlens.backbones.weights import read_state_dict
from traitlens.checks import saved_class_names
from traitlens.errors import first_line
from traitlens.finetune.errors import FinetuneError
from traitlens.finetune.methods import finetune_method
from traitlens.finetune.training import BASE_WEIGHTS, CONFIG, FORMAT, VERSION, WEIGHTS, check_base_spec, prepare_model
from traitlens.json_config import read_json_config

CALIBRATION = "calibration.json"
CALIBRATION_FORMAT = "traitlens.calibration"
"""In a fine-tuned folder written by ``traitlens calibrate``: the bias ``gamma`` of its absent classes."""


def is_finetuned_folder(directory: Path) -> bool:
    return (directory / CONFIG).is_file()


def read_finetune_json(directory: Path) -> dict[str, Any]:
    """``finetune.json``, checked field by field (one FinetuneError line for anything off)."""
    path = directory / CONFIG
    saved = read_json_config(path, FORMAT, "fine-tuned model", FinetuneError, f"{directory} is not a fine-tuned model folder",
                             version=VERSION)
    base = saved.get("base")
    try:
        if not isinstance(base, dict) or not isinstance(base.get("spec"), str) or not isinstance(base.get("pretrained"), bool):
            raise ValueError("base must name a spec and whether it was pretrained")
        if base.get("weights") not in (None, BASE_WEIGHTS):  # never a path of the file's choosing
            raise ValueError(f"base weights must be {BASE_WEIGHTS} or null")
        for name, kind in (("method", str), ("settings", dict), ("classifier", str), ("new_classifier", bool), ("seed", int)):
            if not isinstance(saved.get(name), kind) or isinstance(saved.get(name), bool) is not (kind is bool):
                raise ValueError(f"{name} must be a {kind.__name__}")
        saved_class_names(saved.get("class_names"))
        saved_class_names(saved.get("finetuned_classes"))
    except ValueError as error:
        raise FinetuneError(f"damaged fine-tuned model {path}: {error}") from error
    check_base_spec(base["spec"])
    return saved


def load_finetuned(directory: Path, spec: str, pretrained: bool = True, weights: Path | None = None) -> Backbone:
    """The model of a fine-tuned folder under the name ``spec``; ``pretrained=False`` rebuilds it
    without the trained parameters (random-init base and additions, no class names)."""
    if weights is not None:
        raise FinetuneError(f"{directory} is a fine-tuned model with its own weights; drop --weights")
    saved = read_finetune_json(directory)
    base = saved["base"]
    backbone = load_backbone(base["spec"], weights=directory / BASE_WEIGHTS if base["weights"] else None,
                             pretrained=base["pretrained"] and pretrained)
    class_names = saved_class_names(saved["class_names"])
    classifier = prepare_model(backbone, finetune_method(saved["method"], saved["settings"]),
                               class_names if saved["new_classifier"] else None, saved["seed"])
    if classifier != saved["classifier"]:
        raise FinetuneError(f"{directory} was fine-tuned with classifier {saved['classifier']}; {base['spec']} has {classifier}")
    backbone.spec = spec
    backbone.class_names = list(class_names) if pretrained else None
    if not pretrained:
        return backbone
    _load_trained(backbone, directory / WEIGHTS)
    if not (directory / CALIBRATION).is_file():
        return backbone
    gamma, absent_c = _read_calibration(directory / CALIBRATION, class_names)
    forward = backbone.forward
    return backbone.with_forward(lambda pixels_bchw: (logits := forward(pixels_bchw)) + gamma * absent_c.to(logits),
                                 backbone.class_names)


def _read_calibration(path: Path, class_names: tuple[str, ...]) -> tuple[float, torch.Tensor]:
    """Gamma and the (classes,) bool mask of the absent classes it is added to."""
    saved = read_json_config(path, CALIBRATION_FORMAT, "calibration", FinetuneError, f"no calibration {path}", version=1)
    gamma, absent = saved.get("gamma"), saved.get("absent_classes")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) \
            or not isinstance(absent, list) or not set(absent) <= set(class_names) or saved.get("class_names") != list(class_names):
        raise FinetuneError(f"damaged calibration {path}: gamma must be a finite number and absent_classes the model's classes")
    return float(gamma), torch.tensor([name in absent for name in class_names])


def _load_trained(backbone: Backbone, path: Path) -> None:
    try:
        tensors = read_state_dict(path)
    except Exception as error:  # a damaged file fails inside safetensors in several ways
        raise FinetuneError(f"damaged fine-tuned weights {path}: {first_line(error)}") from error
    own = dict(backbone.model.named_parameters())
    wrong = [name for name, tensor in tensors.items() if name not in own or own[name].shape != tensor.shape]
    if wrong or not tensors:
        raise FinetuneError(f"the fine-tuned weights {path} do not fit the rebuilt model ({len(wrong)} of {len(tensors)} tensors, "
                            f"first: {wrong[0] if wrong else 'none saved'})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)
