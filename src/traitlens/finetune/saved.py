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
from traitlens.sgd_recipe import RECIPE_FIELDS, SGDRecipe

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
        if not isinstance(base.get("weights_fingerprint"), str):
            raise ValueError("base must record its weights fingerprint")
        if not 0 <= saved["seed"] < 2**63:
            raise ValueError("seed must be between 0 and 2**63 - 1")
        saved_class_names(saved.get("class_names"))
        saved_class_names(saved.get("finetuned_classes"))
        _check_training(saved.get("training"))
    except (ValueError, TypeError, FinetuneError) as error:
        raise FinetuneError(f"damaged fine-tuned model {path}: {error}") from error
    check_base_spec(base["spec"])
    return saved


def _check_training(training: Any) -> None:
    """The recorded settings calibration reuses (the recipe, ``n_per_class``), checked."""
    if not isinstance(training, dict):
        raise ValueError("training must record the fine-tuning's settings")
    recipe: dict[str, Any] = {name: training.get(name) for name in RECIPE_FIELDS}
    SGDRecipe(**recipe).check_recipe(FinetuneError)
    n_per_class = training.get("n_per_class")
    if n_per_class is not None and (isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1):
        raise ValueError("training n_per_class must be null or a positive whole number")


def load_finetuned(directory: Path, spec: str, pretrained: bool = True, weights: Path | None = None) -> Backbone:
    """The model of a fine-tuned folder under the name ``spec``; ``pretrained=False`` rebuilds it
    without the trained parameters (random-init base and additions, no class names)."""
    if weights is not None:
        raise FinetuneError(f"{directory} is a fine-tuned model with its own weights; drop --weights")
    saved = read_finetune_json(directory)
    base = saved["base"]
    backbone = load_backbone(base["spec"], weights=directory / BASE_WEIGHTS if base["weights"] and pretrained else None,
                             pretrained=base["pretrained"] and pretrained)
    class_names = saved_class_names(saved["class_names"])
    if pretrained and backbone.weights_fingerprint() != base["weights_fingerprint"]:
        raise FinetuneError(f"{directory} was fine-tuned from other weights of {base['spec']} (fingerprint "
                            f"{base['weights_fingerprint'][:12]}, these {backbone.weights_fingerprint()[:12]})")
    if pretrained and not saved["new_classifier"] and backbone.class_names != list(class_names):
        raise FinetuneError(f"{directory} records other classes than those of {base['spec']}'s classifier")
    method = finetune_method(saved["method"], saved["settings"])
    classifier = prepare_model(backbone, method, class_names if saved["new_classifier"] else None, saved["seed"])
    if classifier != saved["classifier"]:
        raise FinetuneError(f"{directory} was fine-tuned with classifier {saved['classifier']}; {base['spec']} has {classifier}")
    backbone.spec = spec
    backbone.class_names = list(class_names) if pretrained else None
    backbone.weights_changed()
    if not pretrained:
        return backbone
    trained = {name for name, _ in backbone.model.named_parameters() if name.startswith(f"{classifier}.") or method.trains(name)}
    _load_trained(backbone, directory / WEIGHTS, trained)
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


def _load_trained(backbone: Backbone, path: Path, trained: set[str]) -> None:
    """The trained parameters, every one of them (``trained``) and nothing else, by name and shape."""
    try:
        tensors = read_state_dict(path)
    except Exception as error:  # a damaged file fails inside safetensors in several ways
        raise FinetuneError(f"damaged fine-tuned weights {path}: {first_line(error)}") from error
    own = dict(backbone.model.named_parameters())
    wrong = sorted(set(tensors) ^ trained) + [name for name in trained & set(tensors) if own[name].shape != tensors[name].shape]
    if wrong or not tensors:
        raise FinetuneError(f"the fine-tuned weights {path} do not fit the rebuilt model ({len(wrong)} of {len(tensors)} tensors, "
                            f"first: {wrong[0] if wrong else 'none saved'})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)
