"""``torchvision:NAME`` — torchvision classifiers (CNNs such as mobilenet_v2, resnet50).

Pretrained weights are torchvision's own: the file in its download cache
(``$TORCH_HOME/hub/checkpoints``), checked against the SHA-256 prefix in its name, or downloaded
there when absent and the download host answers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.probe import probe_layers
from traitlens.backbones.spec import NUMBER, POSITIVE, LoadRequest, OptionType, register_provider
from traitlens.backbones.weights import build_model, reachable
from traitlens.errors import SpecError, WeightsUnavailableError

_HEAD_NAMES = ("fc", "classifier", "head", "heads", "avgpool")

TORCHVISION_OPTIONS: dict[str, OptionType] = {"num_classes": POSITIVE, "width_mult": NUMBER, "dropout": NUMBER}
"""What ``torchvision:NAME?...`` may set: keyword arguments of the model classes."""


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The feature extractor's stages: ``features.i`` when the model has ``features``, else its
    top-level children up to the head."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [(f"features.{name}", module) for name, module in features.named_children()]
    return [(name, module) for name, module in model.named_children() if name not in _HEAD_NAMES]


def _file_name(entry: Any) -> str:
    """torchvision names its downloads after the URL's last part (``mobilenet_v2-b0353104.pth``)."""
    return str(entry.url).rsplit("/", 1)[-1]


def _cache() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_entry(name: str, file: Path | None, pretrained: bool) -> Any:
    """The weights enum entry whose preprocessing and class names apply: the one ``file`` is the
    download of (``mobilenet_v2-b0353104.pth`` is IMAGENET1K_V1); for pretrained weights the
    library's default, or another version when only that one is in torchvision's cache (so it
    loads offline); else the default."""
    import torchvision

    entries = torchvision.models.get_model_weights(name)
    if file is not None:
        return next((entry for entry in entries if _file_name(entry) == file.name), entries.DEFAULT)
    if pretrained and not (_cache() / _file_name(entries.DEFAULT)).is_file():
        return next((entry for entry in entries if (_cache() / _file_name(entry)).is_file()), entries.DEFAULT)
    return entries.DEFAULT


def cached_weights(entry: Any) -> Path:
    """Where torchvision keeps the file of weights ``entry``. A file there must match the SHA-256
    prefix in its name (torchvision checks it only when downloading); an absent one is left for
    torchvision to download, unless its host cannot be reached: then one line says so at once."""
    import torch.hub

    file = _cache() / _file_name(entry)
    if not file.is_file():
        if not reachable(entry.url):
            raise WeightsUnavailableError(
                f"torchvision's {entry} weights are not in its cache ({file}) and {entry.url} cannot be reached; "
                "copy the file there, or pass --weights PATH to load a local file, or --random-init for random weights")
        return file
    match = torch.hub.HASH_REGEX.search(file.name)
    with file.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    if match and not digest.startswith(match.group(1)):
        raise WeightsUnavailableError(
            f"{file} is not torchvision's {entry} (its SHA-256 does not start with {match.group(1)}): "
            "the file is damaged or was replaced; delete it to download it again")
    return file


@register_provider("torchvision", TORCHVISION_OPTIONS)
def load_torchvision(request: LoadRequest) -> Backbone:
    import torchvision

    name = request.spec.name
    if name not in torchvision.models.list_models():
        raise SpecError(f"torchvision has no model {name!r} (see torchvision.models.list_models())")
    from_cache = request.pretrained and request.weights is None
    default_weights = _weights_entry(name, request.weights, from_cache)
    tried = f"torchvision's {default_weights} from {cached_weights(default_weights) if from_cache else 'its download'}"

    def create(pretrained: bool) -> nn.Module:
        weights = default_weights if pretrained else None
        return torchvision.models.get_model(name, weights=weights, **request.spec.options)

    model: Any = build_model(request, tried, create, hub=False)
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
