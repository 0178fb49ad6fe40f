"""A trained classifier saved as a directory: ``model.safetensors`` + ``model.json``.

``traitlens specimens train-model`` writes one; ``--model traitlens:DIR`` (or the embedded
``traitlens:specimens-vit``) loads it through the same adapter interface as any timm model, with
its head and class names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from traitlens.backbones.preprocess import HALF_MEAN, HALF_STD, Preprocess
from traitlens.cli_args import option_name
from traitlens.errors import SpecError, WeightsUnavailableError
from traitlens.json_config import read_json_config
from traitlens.specimens.checks import check_float, check_int, saved_class_names
from traitlens.store.atomic import atomic_write_json

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT = "traitlens.model"
TIMM_ARCHITECTURE = "vit_tiny_patch16_224"  # timm's ViT, resized by the options below
ARCHITECTURE = f"timm:{TIMM_ARCHITECTURE}"


@dataclass(frozen=True)
class ViTShape:
    """A small timm ViT: ``img_size / patch_size`` patches a side, a CLS token, a linear head."""

    img_size: int = 96
    patch_size: int = 12
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 3.0

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            check_int(getattr(self, name), option_name(name), SpecError)
        check_float(self.mlp_ratio, "--mlp-ratio", SpecError, above=True)
        if self.img_size % self.patch_size:
            raise SpecError(f"image size {self.img_size} is not a multiple of patch size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise SpecError(f"width (--embed-dim) {self.embed_dim} is not a multiple of the number of heads {self.num_heads}")

    def timm_options(self, num_classes: int) -> dict[str, Any]:
        return {**asdict(self), "num_classes": num_classes}

    def preprocess(self) -> Preprocess:
        # images are made at this size: resizing is a no-op for them and a plain resize for others
        return Preprocess(size_hw=(self.img_size, self.img_size), resize=self.img_size, mean=HALF_MEAN, std=HALF_STD,
                          interpolation="bilinear", resize_mode="squash")


@dataclass(frozen=True)
class SavedModel:
    shape: ViTShape
    class_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        import timm

        return timm.create_model(TIMM_ARCHITECTURE, pretrained=False, **self.shape.timm_options(len(self.class_names)))


def save_model_dir(directory: Path, model: torch.nn.Module, saved: SavedModel) -> None:
    """Weights first, then the config that makes the directory complete."""
    from traitlens.sae.io import save_tensors

    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS, dict(model.state_dict()))
    atomic_write_json(directory / CONFIG, {"format": FORMAT, "architecture": ARCHITECTURE,
                                           "shape": asdict(saved.shape), "class_names": list(saved.class_names), **saved.extra})


def read_model_dir(directory: Path) -> SavedModel:
    """The model directory's config, every field checked; one line for a missing or damaged one."""
    missing = f"{directory} is not a traitlens model directory ({CONFIG} and {WEIGHTS} expected)"
    if not (directory / WEIGHTS).is_file():
        raise WeightsUnavailableError(missing)
    path = directory / CONFIG
    data = read_json_config(path, FORMAT, "model config", WeightsUnavailableError, missing)
    if data.get("architecture") != ARCHITECTURE:
        raise WeightsUnavailableError(f"{path} describes a {data.get('architecture')!r} model; this traitlens reads {ARCHITECTURE}")
    names = [item.name for item in fields(ViTShape)]
    try:
        if not isinstance(data.get("shape"), dict) or sorted(data["shape"]) != sorted(names):
            raise ValueError(f"shape must give {', '.join(names)}")
        shape, class_names = ViTShape(**data["shape"]), saved_class_names(data.get("class_names"))
    except (ValueError, SpecError) as error:
        raise WeightsUnavailableError(f"damaged model config {path}: {error}") from error
    extra = {key: value for key, value in data.items() if key not in ("format", "architecture", "shape", "class_names")}
    return SavedModel(shape, class_names, extra)
