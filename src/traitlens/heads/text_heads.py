"""Heads made of text for CLIP-style models: zero-shot classes from a prompt template, and text
concepts (a concept, optionally with a reference to contrast it with).

The logits are CLIP's own: ``exp(logit_scale) * cos(image embedding, text embedding)`` (plus
``logit_bias`` for models that have one, such as SigLIP). Text embeddings are computed once,
without gradients; the image side keeps its autograd graph, so gradient heatmaps work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from traitlens.backbones import Backbone
from traitlens.backbones.open_clip_provider import split_open_clip_name
from traitlens.backbones.spec import parse_spec
from traitlens.heads.errors import HeadError

DEFAULT_TEMPLATE = "a photo of a {}."


def _check_text_tower(backbone: Backbone) -> None:
    model: Any = backbone.model
    if parse_spec(backbone.spec).provider != "open_clip" or not callable(getattr(model, "encode_text", None)) \
            or not hasattr(model, "logit_scale"):
        raise HeadError(f"{backbone.spec} has no text tower; text concepts need a CLIP-style model "
                        "(open_clip:ARCH/PRETRAINED or open_clip:hf-hub:ORG/REPO)")


def _tokenize(backbone: Backbone, prompts: Sequence[str]) -> torch.Tensor:
    """(n, context_length) token ids from the model's own tokenizer."""
    import open_clip

    arch, _tag = split_open_clip_name(parse_spec(backbone.spec).name, pretrained=False)
    try:
        tokenizer = open_clip.get_tokenizer(arch, context_length=backbone.model.context_length)
        ids_nl = tokenizer(list(prompts))
    except Exception as error:  # hub lookups and tokenizer files fail in many ways; one line says which
        raise HeadError(f"cannot tokenize prompts for {backbone.spec}: {str(error).splitlines()[0][:200]}") from error
    vocab_size = getattr(backbone.model, "vocab_size", None)
    if vocab_size is not None and int(ids_nl.max()) >= vocab_size:
        raise HeadError(f"the tokenizer of {arch} gives token ids up to {int(ids_nl.max())}, but the text tower of "
                        f"{backbone.spec} has a vocabulary of {vocab_size}")
    return ids_nl


@torch.no_grad()
def text_embeddings(backbone: Backbone, prompts: Sequence[str]) -> torch.Tensor:
    """(n, e) unit-norm text embeddings of ``prompts`` from a CLIP-style backbone's text tower."""
    _check_text_tower(backbone)
    if not prompts or any(not prompt.strip() for prompt in prompts):
        raise HeadError("text heads need non-empty prompts")
    ids_nl = _tokenize(backbone, prompts).to(backbone.device)
    model: Any = backbone.model  # open_clip's CLIP: encode_text and logit_scale, checked above
    return F.normalize(model.encode_text(ids_nl).float(), dim=-1)


def _text_head_backbone(backbone: Backbone, prompts: Sequence[str], class_names: Sequence[str]) -> Backbone:
    text_ce = text_embeddings(backbone, prompts)
    model: Any = backbone.model

    def forward(pixels_bchw: torch.Tensor) -> torch.Tensor:
        image_be = F.normalize(backbone.forward(pixels_bchw), dim=-1)
        logits_bc = model.logit_scale.exp() * image_be @ text_ce.to(image_be).T
        bias = getattr(model, "logit_bias", None)
        return logits_bc + bias if bias is not None else logits_bc

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
