"""Heads trained by ``traitlens heads train`` on a frozen backbone, one kind per module, found by
name in one registry (``--kind``): a new kind is one file and one :func:`register_head_kind`.

A kind is an ``nn.Module`` that turns the backbone's pixels into class logits through the model
(its own parameters are the only ones trained), says which layer is the last it needs, and which
settings rebuild it from ``head.json``. Class-query kinds (Prompt-CAM, INTR) also say where each
class's query attends (:class:`ClassQueryHead`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.backbones import Backbone
from traitlens.backbones.backbone import ClassAttention
from traitlens.heads.errors import HeadError
from traitlens.heads.linear_head import CONFIG, FORMAT, VERSION, WEIGHTS


class TrainableHead(nn.Module):
    """Logits from pixels through a frozen backbone; subclasses register as a ``--kind``."""

    kind: ClassVar[str]
    summary: ClassVar[str]
    """One line for ``heads train --kind``'s help."""
    options: ClassVar[tuple[str, ...]] = ()
    """The kind's own ``settings`` keys that ``heads train`` takes as options (others are refused)."""

    def __init__(self, class_names: tuple[str, ...], layer: str) -> None:
        super().__init__()
        self.class_names = class_names
        self.layer = layer
        """The layer the head reads last: nothing after it runs."""

    def logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """(b, classes) logits, in the autograd graph of the backbone's layers (for CAMs)."""
        raise NotImplementedError

    def training_logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """The logits a training step differentiates: a kind whose gradients need not pass through
        the backbone computes the backbone's part without a graph."""
        return self.logits(backbone, pixels_bchw)

    def settings(self) -> dict[str, Any]:
        """What rebuilds this head's modules (saved in ``head.json``), besides layer and classes."""
        raise NotImplementedError

    @classmethod
    def settings_from_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The settings that ``heads train``'s options (those in ``options``, given) make."""
        return dict(options)

    @classmethod
    def build(cls, backbone: Backbone, class_names: tuple[str, ...], layer: str, settings: dict[str, Any]) -> TrainableHead:
        """A fresh head of this kind for ``backbone`` (HeadError, one line, when it cannot apply)."""
        raise NotImplementedError

    def save(self, directory: Path, model: dict[str, Any], info: dict[str, Any]) -> None:
        """``head.safetensors`` (the module's tensors), then ``head.json`` (kind, layer, classes,
        settings, the model it was trained on, and ``info``), which marks the folder complete."""
        tensors = {name: tensor.detach().float().cpu() for name, tensor in self.state_dict().items()}
        if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors.values()):
            raise HeadError(f"training diverged: the {self.kind} head's weights are not finite (try a lower --lr)")
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / WEIGHTS, tensors)
        atomic_write_json(directory / CONFIG, {"format": FORMAT, "version": VERSION, "kind": self.kind, "layer": self.layer,
                                               "class_names": list(self.class_names), "settings": self.settings(),
                                               "model": model, **info})

    def attach(self, backbone: Backbone) -> Backbone:
        """``backbone`` with this head as its output."""
        return backbone.with_forward(lambda pixels_bchw: self.logits(backbone, pixels_bchw), self.class_names,
                                     last_layer=self.layer, head_module=self)


class ClassQueryHead(TrainableHead):
    """A head with one query per class: its attention over the patches is the class's map."""

    def attention(self, backbone: Backbone, pixels_bchw: torch.Tensor,
                  blurred: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits (b, classes) and each class query's attention over the patches of
        ``self.layer``, per attention head (b, heads, classes, patches). ``blurred``: target
        classes (b,) and a (b, heads) mask of heads whose attention of the target query is made
        uniform before it is used."""
        raise NotImplementedError

    def attach(self, backbone: Backbone) -> Backbone:
        def attend(pixels_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.attention(backbone, pixels_bchw)

        def blurred_logits(pixels_bchw: torch.Tensor, targets_b: torch.Tensor, blurred_bh: torch.Tensor) -> torch.Tensor:
            return self.attention(backbone, pixels_bchw, (targets_b, blurred_bh))[0]

        capability = ClassAttention(self.kind, self.layer, attend, blurred_logits)
        return backbone.with_forward(lambda pixels_bchw: self.logits(backbone, pixels_bchw), self.class_names,
                                     last_layer=self.layer, class_attention=capability, head_module=self)


def blur_rows(probs_bhqk: torch.Tensor, rows_b: torch.Tensor, blurred_bh: torch.Tensor) -> torch.Tensor:
    """``probs_bhqk`` with query row ``rows_b[i]`` of each masked head made uniform over the keys
    (what zeroing that row's attention logits before the softmax gives)."""
    batch_b = torch.arange(len(rows_b), device=probs_bhqk.device)
    rows_bhk = probs_bhqk[batch_b, :, rows_b]
    uniform_bhk = torch.full_like(rows_bhk, 1.0 / probs_bhqk.shape[-1])
    blurred_rows_bhk = torch.where(blurred_bh[..., None].to(probs_bhqk.device), uniform_bhk, rows_bhk)
    out_bhqk = probs_bhqk.clone()
    out_bhqk[batch_b, :, rows_b] = blurred_rows_bhk
    return out_bhqk


HEAD_KINDS: dict[str, type[TrainableHead]] = {}


def register_head_kind(kind: type[TrainableHead]) -> type[TrainableHead]:
    """Add a head kind (usable as a class decorator)."""
    HEAD_KINDS[kind.kind] = kind
    return kind


def head_kinds() -> dict[str, type[TrainableHead]]:
    """Every registered kind, the built-in ones (:mod:`traitlens.heads.kinds`) included."""
    import traitlens.heads.kinds  # noqa: F401  (importing it registers the built-in kinds)

    return HEAD_KINDS


def head_kind(name: str) -> type[TrainableHead]:
    kinds = head_kinds()
    if name not in kinds:
        raise HeadError(f"unknown head kind {name!r}; choose one of {', '.join(sorted(kinds))}")
    return kinds[name]
