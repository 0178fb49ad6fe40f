"""Backbones: any vision model as layers of tokens, through one interface.

``load_backbone("timm:vit_small_patch16_224.augreg_in21k")`` and friends; see docs/formats.md for
the spec grammar of each provider.
"""

from __future__ import annotations

from pathlib import Path

from traitlens.backbones import (
    hf_provider,
    open_clip_provider,
    timm_provider,
    torchvision_provider,
)
from traitlens.backbones.attention import ProbsEdit, attention_probs
from traitlens.backbones.backbone import Backbone, ClassAttention, Layer, TextTower, TokenEdit
from traitlens.backbones.layout import TOKEN_SELECTIONS, TokenLayout, TokenSelection
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.prompts import appended_tokens, check_appended_tokens
from traitlens.backbones.spec import LoadRequest, ModelSpec, parse_spec, registered_providers
from traitlens.backbones.weights import weights_only_loads

# Importing the provider modules registers them; named here so linters see the use.
_PROVIDER_MODULES = (hf_provider, open_clip_provider, timm_provider, torchvision_provider)


def load_backbone(spec: str, weights: str | Path | None = None, pretrained: bool = True) -> Backbone:
    """Load a model by spec, with pretrained weights, a local weights file, or random init.

    ``weights`` (safetensors, or a torch file read with ``weights_only=True``) wins over
    ``pretrained``; ``pretrained=False`` gives reproducible random weights (seed 0). No file is
    unpickled on the way, whichever library reads it.
    """
    parsed = parse_spec(spec)
    request = LoadRequest(parsed, Path(weights) if weights is not None else None, pretrained)
    with weights_only_loads():
        return registered_providers()[parsed.provider].load(request)


__all__ = [
    "TOKEN_SELECTIONS",
    "Backbone",
    "ClassAttention",
    "Layer",
    "LoadRequest",
    "ModelSpec",
    "Preprocess",
    "ProbsEdit",
    "TextTower",
    "TokenEdit",
    "TokenLayout",
    "TokenSelection",
    "appended_tokens",
    "attention_probs",
    "check_appended_tokens",
    "load_backbone",
    "parse_spec",
]
