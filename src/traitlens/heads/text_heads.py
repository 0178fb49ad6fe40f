"""Heads made of text for CLIP-style models: zero-shot classes from a prompt template, and text
concepts (a concept, optionally with a reference to contrast it with).

The logits are CLIP's own: ``exp(logit_scale) * cos(image embedding, text embedding)`` (plus
``logit_bias`` for models that have one, such as SigLIP). Text embeddings are computed once,
without gradients; the image side keeps its autograd graph, so gradient heatmaps work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from traitlens.backbones import Backbone
from traitlens.backbones.backbone import TextTower
from traitlens.errors import TraitlensError
from traitlens.heads.errors import HeadError

DEFAULT_TEMPLATE = "a photo of a {}."


@torch.no_grad()
def text_embeddings(backbone: Backbone, prompts: Sequence[str]) -> torch.Tensor:
    """(n, e) unit-norm text embeddings of ``prompts`` from a CLIP-style backbone's text tower."""
    tower = _text_tower(backbone)
    if not prompts or any(not prompt.strip() for prompt in prompts):
        raise HeadError("text heads need non-empty prompts")
    try:
        return tower.embed(prompts)
    except TraitlensError as error:
        raise HeadError(str(error)) from error


def _text_tower(backbone: Backbone) -> TextTower:
    if backbone.text_tower is None:
        raise HeadError(f"{backbone.spec} has no text tower; text concepts need a CLIP-style model "
                        "(open_clip:ARCH/PRETRAINED or open_clip:hf-hub:ORG/REPO)")
    return backbone.text_tower


def _text_head_backbone(backbone: Backbone, prompts: Sequence[str], class_names: Sequence[str]) -> Backbone:
    tower = _text_tower(backbone)
    text_ce = text_embeddings(backbone, prompts)

    def forward(pixels_bchw: torch.Tensor) -> torch.Tensor:
        return tower.logits(F.normalize(backbone.forward(pixels_bchw), dim=-1), text_ce)

    return backbone.with_forward(forward, class_names)


def zero_shot_backbone(backbone: Backbone, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> Backbone:
    """A CLIP-style ``backbone`` as a classifier: forward (b, 3, h, w) -> (b, classes) logits, one
    class per name, prompted as ``template.format(name)``."""
    if "{}" not in template:
        raise HeadError(f"the prompt template {template!r} has no {{}} for the class name")
    if len(set(class_names)) != len(class_names) or not class_names:
        raise HeadError("zero-shot classes must be one or more distinct names")
    return _text_head_backbone(backbone, [template.format(name) for name in class_names], class_names)


def concept_backbone(backbone: Backbone, concept: str, reference: str | None = None) -> Backbone:
    """A CLIP-style ``backbone`` scoring one text concept: forward (b, 3, h, w) -> (b, 1) logits,
    or (b, 2) with a ``reference`` (class names ``[concept, reference]``), so a heatmap of class 0
    shows the concept and class 0 minus γ·class 1 what sets it apart from the reference."""
    prompts = [concept] if reference is None else [concept, reference]
    if reference is not None and reference == concept:
        raise HeadError("the reference must differ from the concept")
    return _text_head_backbone(backbone, prompts, prompts)
