"""A backbone whose output is a probe's logits: the same model and preprocessing, with the model's
own head replaced by a :class:`LinearHead` on one layer.

The forward pass runs the model only as far as the probe's layer (later layers cannot change the
logits), capturing that layer's tokens inside the autograd graph, so gradient heatmaps, edits and
captures work as on the plain backbone. Its layers are the model's layers up to and including the
probe's: a later layer never runs, so naming one is an unknown-layer error rather than an empty
capture, and layer ``-1`` is the probe's own layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from traitlens.backbones import Backbone, load_backbone
from traitlens.heads.errors import HeadError
from traitlens.heads.linear_head import LINEAR_KINDS, LinearHead, load_head, read_head_json
from traitlens.heads.pooling import check_pooling, pool_tokens


def check_head_model(backbone: Backbone, head: LinearHead | dict[str, Any], where: str = "the head") -> None:
    """Refuse a head trained on another model's activations (by weights fingerprint); ``head`` is
    a linear head or the ``model`` record of any head's ``head.json``."""
    model = head.model if isinstance(head, LinearHead) else head
    trained_on = str(model.get("weights_fingerprint", ""))
    if trained_on != backbone.weights_fingerprint():
        raise HeadError(f"{where} was trained on activations of {model.get('spec')} with weights "
                        f"{trained_on[:12] or 'unknown'}, not those of {backbone.spec} ({backbone.weights_fingerprint()[:12]}); "
                        "load the same --model, --weights or --random-init")


def head_backbone(backbone: Backbone, head: LinearHead, where: str = "the head") -> Backbone:
    """``backbone`` with ``head`` as its output: forward (b, 3, h, w) -> (b, classes) logits.

    Refused (one line) when the layer is unknown, its width differs from the head's, the pooling
    needs a token the layer lacks, or the model's weights are not those the head was trained on.
    """
    layer = backbone.layer(head.layer)
    if layer.width != head.width:
        raise HeadError(f"{where} reads width {head.width} at {head.layer}; that layer of {backbone.spec} has width {layer.width}")
    check_pooling(layer.layout, "all", head.pooling, f"layer {layer.name} of {backbone.spec}")
    check_head_model(backbone, head, where)

    def forward(pixels_bchw: torch.Tensor) -> torch.Tensor:
        with backbone.capture(layer.name, detach=False) as captured:
            backbone.run_until(pixels_bchw, layer.name)
        return head.logits(pool_tokens(captured[layer.name], layer.layout, "all", head.pooling))

    return backbone.with_forward(forward, head.class_names, last_layer=layer.name)


def load_head_backbone(backbone: Backbone, head_dir: str | Path) -> Backbone:
    """``backbone`` with the head saved in ``head_dir`` as its output: a linear probe
    (``traitlens probe`` or ``heads train --kind linear``) or any kind ``heads train`` makes."""
    head_dir = Path(head_dir)
    where = f"the head at {head_dir}"
    if read_head_json(head_dir).get("kind", "linear") in LINEAR_KINDS:
        return head_backbone(backbone, load_head(head_dir), where)
    from traitlens.heads.saved import load_trained_head

    return load_trained_head(backbone, head_dir).attach(backbone)


def load_model_with_head(model: str, weights: str | Path | None, pretrained: bool, head_dir: str | Path | None) -> Backbone:
    """``model`` loaded, with the head in ``head_dir`` as its output when given. Jobs call this
    before claiming their output folder: a foreign or damaged head is refused first, in one line."""
    backbone = load_backbone(model, weights=weights, pretrained=pretrained)
    return backbone if head_dir is None else load_head_backbone(backbone, head_dir)
