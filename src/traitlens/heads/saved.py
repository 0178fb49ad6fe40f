"""Reading a head that ``traitlens heads train`` saved in the generic form (every kind but
linear): ``head.json`` fields checked, the module rebuilt from its settings for this backbone,
and its tensors loaded strictly (a missing, extra, misshapen or non-finite one is one line)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from traitlens.backbones import Backbone
from traitlens.checks import saved_class_names
from traitlens.errors import LayerError
from traitlens.heads.attach import check_head_model
from traitlens.heads.errors import HeadError
from traitlens.heads.linear_head import WEIGHTS, read_head_json
from traitlens.heads.trainable import TrainableHead, head_kind


def load_trained_head(backbone: Backbone, directory: Path) -> TrainableHead:
    """The head saved in ``directory``, rebuilt on ``backbone`` (the model it was trained on)."""
    data = read_head_json(directory)
    try:
        kind = head_kind(str(data.get("kind")))
        class_names = saved_class_names(data.get("class_names"))
        layer, settings, model = data.get("layer"), data.get("settings"), data.get("model")
        if not isinstance(layer, str) or not layer:
            raise ValueError("layer must be a layer name")
        if not isinstance(settings, dict):
            raise ValueError("settings must be an object")
        if not isinstance(model, dict):
            raise ValueError("model must be an object with a spec and a weights_fingerprint")
    except (ValueError, HeadError) as error:
        raise HeadError(f"damaged head {directory}: {error}") from error
    where = f"the head at {directory}"
    check_head_model(backbone, model, where)
    try:
        head = kind.build(backbone, class_names, backbone.resolve_layer(layer), settings)
    except (HeadError, LayerError) as error:
        raise HeadError(f"{where} does not fit {backbone.spec}: {error}") from error
    try:
        tensors = load_file(str(directory / WEIGHTS))
        head.load_state_dict(tensors, strict=True)
    except Exception as error:  # safetensors and load_state_dict raise several types for damaged files
        raise HeadError(f"damaged head weights {directory / WEIGHTS}: {str(error).splitlines()[0][:200]}") from error
    if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors.values()):
        raise HeadError(f"damaged head {directory}: {WEIGHTS} holds NaN or infinite weights")
    return head.to(backbone.device).eval()
