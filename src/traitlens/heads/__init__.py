"""Heads on frozen backbones: linear probes on a stored layer, zero-shot prompts and text concepts
for CLIP-style models. Each gives a :class:`~traitlens.backbones.Backbone` whose ``forward``
returns logits named by ``class_names``, usable wherever a model's own head is."""

from traitlens.heads.attach import head_backbone, load_head_backbone
from traitlens.heads.errors import HeadError
from traitlens.heads.linear_head import LinearHead, head_sha256, load_head, save_head
from traitlens.heads.pooling import POOLINGS, Pooling
from traitlens.heads.probe import ProbeConfig, train_probe
from traitlens.heads.text_heads import (
    DEFAULT_TEMPLATE,
    concept_backbone,
    text_embeddings,
    zero_shot_backbone,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "POOLINGS",
    "HeadError",
    "LinearHead",
    "Pooling",
    "ProbeConfig",
    "concept_backbone",
    "head_backbone",
    "head_sha256",
    "load_head",
    "load_head_backbone",
    "save_head",
    "text_embeddings",
    "train_probe",
    "zero_shot_backbone",
]
