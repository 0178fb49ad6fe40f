"""``hf:REPO_OR_DIR`` — transformers vision models: CLIP and SigLIP vision towers, DINOv2 (with or
without registers), ViT, and their image-classification variants."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import CLIP_MEAN, CLIP_STD, HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from traitlens.backbones.probe import SequenceHint, probe_layers
from traitlens.backbones.spec import LoadRequest, register_provider
from traitlens.backbones.weights import build_model
from traitlens.errors import SpecError

_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}
_NO_CLS_TYPES = ("siglip",)


def _model_class(config: Any) -> tuple[Any, Any]:
    """The transformers class to build and the (vision) config to build it from."""
    import transformers

    model_type = config.model_type
    if model_type.startswith("clip"):
        return transformers.CLIPVisionModel, getattr(config, "vision_config", config)
    if model_type.startswith("siglip"):
        return transformers.SiglipVisionModel, getattr(config, "vision_config", config)
    if any(arch.endswith("ForImageClassification") for arch in getattr(config, "architectures", None) or ()):
        return transformers.AutoModelForImageClassification, config
    return transformers.AutoModel, config


def _default_preprocess(config: Any) -> Preprocess:
    size = int(config.image_size)
    if config.model_type.startswith("siglip"):
        return Preprocess((size, size), size, HALF_MEAN, HALF_STD, "bicubic", "squash")
    if config.model_type.startswith("clip"):
        return Preprocess((size, size), size, CLIP_MEAN, CLIP_STD, "bicubic")
    return Preprocess((size, size), round(size * 256 / 224), IMAGENET_MEAN, IMAGENET_STD, "bicubic")


def hf_preprocess(repo: str, config: Any) -> Preprocess:
    """The repo's image processor when it has one, else the model family's defaults."""
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(repo)
    except Exception:  # a config-only directory or no hub: fall back to the family defaults
        return _default_preprocess(config)
    size, crop = processor.size, getattr(processor, "crop_size", None)
    interpolation = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 3)), "bicubic")
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    if getattr(size, "shortest_edge", None) and getattr(processor, "do_center_crop", False) and crop is not None:
        return Preprocess((crop.height, crop.width), size.shortest_edge, mean, std, interpolation)
    if getattr(size, "height", None):
        return Preprocess((size.height, size.width), min(size.height, size.width), mean, std, interpolation, "squash")
    return _default_preprocess(config)


def _sequence_hint(config: Any) -> SequenceHint:
    if config.model_type.startswith(_NO_CLS_TYPES):
        n_prefix, has_cls = 0, False
    else:
        n_prefix, has_cls = 1 + int(getattr(config, "num_register_tokens", 0) or 0), True
    side = int(config.image_size) // int(config.patch_size)
    return SequenceHint(n_prefix=n_prefix, has_cls=has_cls, grid_hw=(side, side))


def _encoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("encoder.layer", "encoder.layers")):
            return [(f"{name}.{i}", block) for i, block in enumerate(module)]
    raise SpecError(f"cannot find transformer blocks in {type(model).__name__}")


def _head_output(model: nn.Module) -> Any:
    def forward(pixels_bchw: torch.Tensor) -> torch.Tensor:
        output = model(pixel_values=pixels_bchw)
        for field in ("logits", "pooler_output"):
            value = getattr(output, field, None)
            if value is not None:
                return value
        return output.last_hidden_state[:, 0]

    return forward


@register_provider("hf")
def load_hf(request: LoadRequest) -> Backbone:
    import transformers

    repo = request.spec.name

    def create(pretrained: bool) -> nn.Module:
        config = transformers.AutoConfig.from_pretrained(repo, **request.spec.options)
        model_class, build_config = _model_class(config)
        if pretrained:
            return model_class.from_pretrained(repo, **request.spec.options)
        return model_class.from_config(build_config) if hasattr(model_class, "from_config") else model_class(build_config)

    model: Any = build_model(request, f"transformers from {repo!r}", create)
    config = model.config
    preprocess = hf_preprocess(repo, config)
    forward = _head_output(model)
    layers = probe_layers(_encoder_blocks(model), forward, preprocess.size_hw, _sequence_hint(config))
    id2label = getattr(config, "id2label", None)
    has_head = hasattr(model, "classifier") and id2label
    class_names = [id2label[i] for i in range(len(id2label))] if has_head else None
    return Backbone(request.spec.text, model, layers, preprocess, forward, class_names=class_names)
