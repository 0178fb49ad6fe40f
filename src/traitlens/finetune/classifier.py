"""The classifier a fine-tuning trains: found by the attribute each model library gives it, and
replaced by a new one when the images' classes are not the model's."""

from __future__ import annotations

import torch
from torch import nn

from traitlens.backbones import Backbone
from traitlens.finetune.errors import FinetuneError

_ATTRIBUTES = ("classifier", "fc", "head")
"""Where transformers, torchvision and other models keep their classifier (timm: ``get_classifier()``)."""


def _last_linear(module: object) -> nn.Linear | None:
    if isinstance(module, nn.Sequential):
        linears = [inner for inner in module if isinstance(inner, nn.Linear)]
        return linears[-1] if linears else None
    return module if isinstance(module, nn.Linear) else None


def find_classifier(backbone: Backbone) -> tuple[str, nn.Linear]:
    """The name (in ``backbone.model``) and module of the linear classifier whose outputs are the
    model's; a model without one (an image encoder) is one FinetuneError line."""
    model = backbone.model
    get_classifier = getattr(model, "get_classifier", None)
    candidates = [get_classifier()] if callable(get_classifier) else []
    candidates += [getattr(model, attribute, None) for attribute in _ATTRIBUTES]
    names = {id(module): name for name, module in model.named_modules()}
    parameter = next(model.parameters())
    with torch.no_grad():
        outputs = backbone.forward(torch.zeros(1, 3, *backbone.preprocess.size_hw, dtype=parameter.dtype, device=parameter.device))
    for candidate in candidates:
        linear = _last_linear(candidate)
        if linear is not None and id(linear) in names and outputs.shape[-1] == linear.out_features:
            return names[id(linear)], linear
    raise FinetuneError(f"{backbone.spec} has no classifier head to fine-tune (a linear layer giving its outputs); "
                        "load a classification model (a timm model with num_classes, a ...ForImageClassification)")


def replace_classifier(backbone: Backbone, name: str, n_classes: int) -> None:
    """A new linear classifier of ``n_classes`` outputs in place of ``name`` (torch's default init)."""
    old = backbone.model.get_submodule(name)
    assert isinstance(old, nn.Linear)
    new = nn.Linear(old.in_features, n_classes, bias=old.bias is not None).to(old.weight)
    backbone.model.set_submodule(name, new)
