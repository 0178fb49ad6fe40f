"""``train-model --teacher SPEC``: feature distillation from a teacher model's patch tokens.

The student's last-layer patch tokens learn, through a linear map that is trained with them and
then dropped, to predict the teacher's patch tokens at ``--teacher-layer`` resized to the
student's grid (a FitNets hint, Romero et al., 2015), on top of the cross-entropy. Why: a ViT
trained from scratch on a few tens of thousands of images may never find a small shape trait (the
specimens' round vs forked tail) that a CNN finds in a few epochs; a CNN teacher hands it the
local features it lacks (DeiT, Touvron et al., 2021, saw the same with a CNN teacher). The teacher
sees the student's pixels, resized to its own input size and normalized its way, so a teacher that
crops or pads at inference sees the whole student image here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.backbones import load_backbone
from traitlens.backbones.backbone import Backbone, Layer
from traitlens.backbones.preprocess import Preprocess
from traitlens.checks import check_float
from traitlens.errors import SpecError


@dataclass(frozen=True)
class TeacherConfig:
    """Which model teaches, at which of its layers, and how much its hint weighs against the
    cross-entropy."""

    spec: str
    layer: str = "-1"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec:
            raise SpecError(f"--teacher must name a model, got {self.spec!r}")
        check_float(self.weight, "--distill-weight", SpecError, above=True)


def patch_grid(backbone: Backbone, layer_key: str, tokens_btd: torch.Tensor) -> torch.Tensor:
    """A layer's patch tokens as a (b, d, h, w) map (prefix tokens dropped)."""
    layer = backbone.layer(layer_key)
    grid_h, grid_w = layer.layout.grid_hw
    patches_btd = tokens_btd[:, layer.layout.n_prefix :]
    return patches_btd.transpose(1, 2).reshape(len(tokens_btd), -1, grid_h, grid_w)


def _layer_key(key: str) -> str | int:
    return int(key) if key.lstrip("-").isdigit() else key


def load_teacher(config: TeacherConfig) -> Backbone:
    """The teacher, in eval mode, its layer checked to have a patch grid: loaded before anything
    is read or written, so a bad one is one line and costs nothing."""
    teacher = load_backbone(config.spec)
    teacher.model.eval()
    _grid_layer(teacher, _layer_key(config.layer))
    return teacher


def _grid_layer(backbone: Backbone, key: str | int) -> Layer:
    layer = backbone.layer(backbone.resolve_layer(key))
    if not layer.layout.grid_hw[0] or not layer.layout.grid_hw[1]:
        raise SpecError(f"layer {layer.name} of {backbone.spec} has no patch grid to distil")
    return layer


class FeatureHint(nn.Module):
    """The hint: the student's patch tokens (last layer), mapped linearly to the teacher's width,
    against the teacher's tokens at its layer (normalized per token, so no channel's scale
    dominates) resized to the student's grid; mean squared error."""

    def __init__(self, config: TeacherConfig, teacher: Backbone, student: Backbone) -> None:
        super().__init__()
        self.config, self.teacher, self.student = config, teacher, student
        teacher_layer, student_layer = _grid_layer(teacher, _layer_key(config.layer)), _grid_layer(student, -1)
        self.teacher_layer, self.student_layer = teacher_layer.name, student_layer.name
        self.student_grid_hw = student_layer.layout.grid_hw
        self.project = nn.Linear(student_layer.width, teacher_layer.width)

    def identity(self) -> dict[str, Any]:
        """What of the teacher fixes the student's weights: its spec, layer, weight and weights."""
        return {"spec": self.config.spec, "layer": self.teacher_layer, "weight": self.config.weight,
                "weights_fingerprint": self.teacher.weights_fingerprint()}

    @torch.no_grad()
    def targets(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """The teacher's tokens for the student's preprocessed pixels, (b, student patches, d_teacher)."""
        pixels_bchw = _renormalize(pixels_bchw, self.student.preprocess, self.teacher.preprocess)
        tokens_btd = self.teacher.tokens(pixels_bchw, self.teacher_layer)[self.teacher_layer]
        grid_bdhw = patch_grid(self.teacher, self.teacher_layer, tokens_btd.float())
        grid_bdhw = F.interpolate(grid_bdhw, size=self.student_grid_hw, mode="bilinear", align_corners=False)
        targets_btd = grid_bdhw.flatten(2).transpose(1, 2)
        return F.layer_norm(targets_btd, targets_btd.shape[-1:])

    def loss(self, student_patches_bdhw: torch.Tensor, targets_btd: torch.Tensor) -> torch.Tensor:
        predicted_btd = self.project(student_patches_bdhw.flatten(2).transpose(1, 2))
        return F.mse_loss(predicted_btd, targets_btd)


def _renormalize(pixels_bchw: torch.Tensor, source: Preprocess, target: Preprocess) -> torch.Tensor:
    """Pixels normalized and sized for ``source`` as ``target`` would have them."""
    def channels(values: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(values, dtype=pixels_bchw.dtype, device=pixels_bchw.device)[:, None, None]

    unit = pixels_bchw * channels(source.std) + channels(source.mean)
    if tuple(unit.shape[-2:]) != tuple(target.size_hw):
        unit = F.interpolate(unit, size=target.size_hw, mode="bilinear", antialias=True, align_corners=False)
    return (unit - channels(target.mean)) / channels(target.std)
