"""``torchvision:NAME`` — torchvision classifiers (CNNs such as mobilenet_v2, resnet50)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.probe import probe_layers
from traitlens.backbones.spec import LoadRequest, register_provider
from traitlens.backbones.weights import build_model
from traitlens.errors import SpecError

_HEAD_NAMES = ("fc", "classifier", "head", "heads", "avgpool")


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The feature extractor's stages: ``features.i`` when the model has ``features``, else its
    top-level children up to the head."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [(f"features.{name}", module) for name, module in features.named_children()]
    return [(name, module) for name, module in model.named_children() if name not in _HEAD_NAMES]


def _weights_entry(name: str, file: Path | None) -> Any:
    """The weights enum entry that describes ``file`` (torchvision names its downloads after the
    URL's last part, e.g. ``mobilenet_v2-b0353104.pth`` is IMAGENET1K_V1), so its preprocessing
    and class names are used; otherwise the library's default entry."""
    import torchvision

    entries = torchvision.models.get_model_weights(name)
    if file is not None:
        for entry in entries:
            if entry.url.rsplit("/", 1)[-1] == file.name:
                return entry
    return entries.DEFAULT


@register_provider("torchvision")
def load_torchvision(request: LoadRequest) -> Backbone:
    import torchvision

    name = request.spec.name
    if name not in torchvision.models.list_models():
        raise SpecError(f"torchvision has no model {name!r} (see torchvision.models.list_models())")
    default_weights = _weights_entry(name, request.weights)

    def create(pretrained: bool) -> nn.Module:
        weights = default_weights if pretrained else None
        return torchvision.models.get_model(name, weights=weights, **request.spec.options)

    model: Any = build_model(request, f"torchvision's {default_weights} download", create)
    transforms = default_weights.transforms()
    crop = int(transforms.crop_size[0])
    preprocess = Preprocess(
        size_hw=(crop, crop),
        resize=int(transforms.resize_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )
    layers = probe_layers(_stages(model), model, preprocess.size_hw)
    categories = default_weights.meta.get("categories")
    has_real_head = request.pretrained or request.weights is not None
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    n_outputs = linears[-1].out_features if linears else 0
    class_names = categories if has_real_head and categories and n_outputs == len(categories) else None
    return Backbone(request.spec.text, model, layers, preprocess, model, class_names=class_names)
