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

from traitlens.heads.errors import HeadError
from traitlens.heads.pooling import POOLINGS, Pooling
from traitlens.json_config import read_json_config
from traitlens.sae.io import save_tensors
from traitlens.store.atomic import atomic_write_json

WEIGHTS = "head.safetensors"
CONFIG = "head.json"
FORMAT = "traitlens.head"
VERSION = 1


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


def load_head(directory: str | Path) -> LinearHead:
    """The head saved in ``directory``, checked for consistent shapes."""
    directory = Path(directory)
    data = read_json_config(directory / CONFIG, FORMAT, "head config", HeadError,
                            f"no head at {directory}: {CONFIG} missing (train one with traitlens probe)", VERSION)
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except Exception as error:  # safetensors raises several types for missing, truncated or foreign files
        raise HeadError(f"cannot read head weights {directory / WEIGHTS}: {str(error).splitlines()[0][:200]}") from error
    try:
        known = {"format", "version", "layer", "width", "pooling", "class_names", "model"}
        width = int(data["width"])
        head = LinearHead(tensors["weight"], tensors["bias"], str(data["layer"]), data["pooling"],
                          tuple(str(name) for name in data["class_names"]), dict(data["model"]),
                          {key: value for key, value in data.items() if key not in known})
    except (KeyError, TypeError, ValueError) as error:
        raise HeadError(f"damaged head {directory}: missing or malformed {error}") from error
    n_classes = len(head.class_names)
    if head.pooling not in POOLINGS:
        raise HeadError(f"damaged head {directory}: unknown pooling {head.pooling!r}")
    if head.weight_cd.shape != (n_classes, width) or head.bias_c.shape != (n_classes,):
        raise HeadError(f"damaged head {directory}: weight {tuple(head.weight_cd.shape)} and bias {tuple(head.bias_c.shape)} "
                        f"do not fit {n_classes} classes of width {width}")
    return head
