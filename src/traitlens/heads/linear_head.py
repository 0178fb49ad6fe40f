"""A linear head on pooled layer tokens, saved as ``head.safetensors`` + ``head.json``.

``head.safetensors`` holds ``weight`` (classes, width) and ``bias`` (classes,) in float32, with any
input standardization already folded in, so ``logits = pooled @ weight.T + bias``. ``head.json``
says which layer and pooling it reads, what the classes are, and which model's activations it was
trained on (spec and weights fingerprint), so it is never attached to another model by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.checks import saved_class_names
from traitlens.digests import files_sha256
from traitlens.heads.errors import HeadError
from traitlens.heads.pooling import POOLINGS, Pooling
from traitlens.json_config import read_json_config

WEIGHTS = "head.safetensors"
CONFIG = "head.json"
FORMAT = "traitlens.head"
VERSION = 1
LINEAR_KINDS = ("linear_probe", "linear")
"""``kind`` of the heads in this format: ``traitlens probe``'s, and ``heads train --kind linear``'s."""


@dataclass(frozen=True, eq=False)
class LinearHead:
    """Logits from one layer's pooled tokens. ``model`` is the provenance of the activations it was
    trained on: ``spec``, ``weights``, ``pretrained``, ``weights_fingerprint``."""

    weight_cd: torch.Tensor
    bias_c: torch.Tensor
    layer: str
    pooling: Pooling
    class_names: tuple[str, ...]
    model: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.weight_cd.shape[1])

    def logits(self, pooled_bd: torch.Tensor) -> torch.Tensor:
        """(b, d) pooled features -> (b, classes) logits, on the features' device and dtype."""
        return pooled_bd @ self.weight_cd.to(pooled_bd).T + self.bias_c.to(pooled_bd)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "layer": self.layer, "width": self.width, "pooling": self.pooling,
                "class_names": list(self.class_names), "model": self.model, **self.info}


def save_head(directory: Path, head: LinearHead) -> None:
    """Weights first, then the JSON that marks the directory complete; both written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS, {"weight": head.weight_cd.float(), "bias": head.bias_c.float()})
    atomic_write_json(directory / CONFIG, head.to_json())


def read_head_json(directory: Path) -> dict[str, Any]:
    """``head.json`` of any kind, checked to be a traitlens head config (fields not yet)."""
    return read_json_config(directory / CONFIG, FORMAT, "head config", HeadError,
                            f"no head at {directory}: {CONFIG} missing (train one with traitlens probe or traitlens heads train)",
                            VERSION)


def _read_head_json(directory: Path) -> dict[str, Any]:
    """``head.json`` with every field checked for type and range."""
    data = read_head_json(directory)
    if data.get("kind", "linear") not in LINEAR_KINDS:
        raise HeadError(f"{directory} holds a {data['kind']} head; a linear probe is needed here "
                        "(traitlens probe, or traitlens heads train --kind linear)")
    try:
        if not isinstance(data.get("layer"), str) or not data["layer"]:
            raise ValueError("layer must be a layer name")
        width = data.get("width")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer of at least 1, got {width!r}")
        if data.get("pooling") not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {data.get('pooling')!r}")
        saved_class_names(data.get("class_names"))
        model = data.get("model")
        if not isinstance(model, dict) or not all(isinstance(model.get(key, ""), str) for key in ("spec", "weights_fingerprint")):
            raise ValueError("model must be an object with a spec and a weights_fingerprint")
    except ValueError as error:
        raise HeadError(f"damaged head {directory}: {error}") from error
    return data


def load_head(directory: str | Path) -> LinearHead:
    """The head saved in ``directory``, checked for consistent types, shapes and finite weights."""
    directory = Path(directory)
    data = _read_head_json(directory)
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except Exception as error:  # safetensors raises several types for missing, truncated or foreign files
        raise HeadError(f"cannot read head weights {directory / WEIGHTS}: {str(error).splitlines()[0][:200]}") from error
    weight_cd, bias_c = tensors.get("weight"), tensors.get("bias")
    class_names = saved_class_names(data["class_names"])
    shape = (len(class_names), data["width"])
    if weight_cd is None or bias_c is None or weight_cd.shape != shape or bias_c.shape != shape[:1] \
            or not weight_cd.is_floating_point() or not bias_c.is_floating_point():
        raise HeadError(f"damaged head {directory}: {WEIGHTS} must hold float weight {shape} and bias {shape[:1]} "
                        f"for {len(class_names)} classes of width {data['width']}")
    if not bool(torch.isfinite(weight_cd).all()) or not bool(torch.isfinite(bias_c).all()):
        raise HeadError(f"damaged head {directory}: {WEIGHTS} holds NaN or infinite weights")
    known = {"format", "version", "layer", "width", "pooling", "class_names", "model"}
    return LinearHead(weight_cd.float(), bias_c.float(), data["layer"], data["pooling"], class_names, dict(data["model"]),
                      {key: value for key, value in data.items() if key not in known})


def head_sha256(directory: str | Path) -> str:
    """One digest of a saved head's files: what a job that reads the head records, so that a
    resumed job refuses a head replaced under the same path."""
    return files_sha256(Path(directory), (CONFIG, WEIGHTS))
