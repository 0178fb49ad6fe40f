"""``hf:REPO_OR_DIR`` — transformers vision models: CLIP and SigLIP vision towers, DINOv2 (with or
without registers), ViT, and their image-classification variants.

Spec options update the config of the model that is built (the vision config of a CLIP or SigLIP
checkpoint), with random init and pretrained weights alike; only the size fields in
:data:`HF_OPTIONS` may be set. Remote code is never run (``trust_remote_code=False``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
)
from traitlens.backbones.probe import SequenceHint, probe_layers
from traitlens.backbones.spec import (
    COUNT,
    POSITIVE,
    LoadRequest,
    OptionType,
    register_provider,
    shorten,
)
from traitlens.backbones.weights import build_model, hub_offline_when_unreachable
from traitlens.errors import SpecError

_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}
_NO_CLS_TYPES = ("siglip",)
# Vision towers of two-tower models; anything else is built by the Auto classes.
_CLIP_TYPES = ("clip", "clip_vision_model")
_SIGLIP_TYPES = ("siglip", "siglip_vision_model")
_BLOCK_LIST_NAMES = ("layer", "layers", "blocks")

HF_OPTIONS: dict[str, OptionType] = {
    "image_size": POSITIVE, "patch_size": POSITIVE, "hidden_size": POSITIVE, "num_hidden_layers": POSITIVE,
    "num_attention_heads": POSITIVE, "intermediate_size": POSITIVE, "num_register_tokens": COUNT, "num_labels": POSITIVE,
}
"""Config fields ``hf:REPO?...`` may set: the architecture's sizes. Other config fields name code
(``auto_map``) or change how weights are read."""
# never run a repository's own Python code (custom architectures); transformers would otherwise ask
_NO_REMOTE_CODE = {"trust_remote_code": False}


def _model_class(config: Any) -> tuple[Any, Any]:
    """The transformers class to build and the (vision) config to build it from."""
    import transformers

    model_type = config.model_type
    if model_type in _CLIP_TYPES:
        return transformers.CLIPVisionModel, getattr(config, "vision_config", config)
    if model_type in _SIGLIP_TYPES:
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


def _entry(mapping: Any, key: str) -> Any:
    """``size["height"]`` for the plain dicts of transformers 4.x and the SizeDicts of 5.x."""
    if mapping is None:
        return None
    return mapping.get(key) if isinstance(mapping, dict) else getattr(mapping, key, None)


def hf_preprocess(repo: str, config: Any) -> Preprocess:
    """The repo's image processor when it has one, else the model family's defaults."""
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(repo, **_NO_REMOTE_CODE)
    except Exception:  # a config-only directory or no hub: fall back to the family defaults
        return _default_preprocess(config)
    size, crop = processor.size, getattr(processor, "crop_size", None)
    interpolation = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 3)), "bicubic")
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    shortest = _entry(size, "shortest_edge")
    crop_h, crop_w = _entry(crop, "height"), _entry(crop, "width")
    if shortest and getattr(processor, "do_center_crop", False) and crop_h and crop_w:
        return Preprocess((int(crop_h), int(crop_w)), int(shortest), mean, std, interpolation)
    height, width = _entry(size, "height"), _entry(size, "width")
    if height and width:
        return Preprocess((int(height), int(width)), min(int(height), int(width)), mean, std, interpolation, "squash")
    return _default_preprocess(config)


def _sequence_hint(config: Any, size_hw: tuple[int, int]) -> SequenceHint:
    if config.model_type.startswith(_NO_CLS_TYPES):
        n_prefix, has_cls = 0, False
    else:
        n_prefix, has_cls = 1 + int(getattr(config, "num_register_tokens", 0) or 0), True
    patch = config.patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
    return SequenceHint(n_prefix=n_prefix, has_cls=has_cls, grid_hw=(size_hw[0] // patch_h, size_hw[1] // patch_w))


def _encoder_blocks(model: nn.Module, n_blocks: int) -> list[tuple[str, nn.Module]]:
    """The transformer blocks: ``encoder.layer`` (DINOv2), ``encoder.layers`` (CLIP, SigLIP) or,
    since transformers 5, ``vit.layers`` (ViT)."""
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and last in _BLOCK_LIST_NAMES and len(module) == n_blocks:
            return [(f"{name}.{i}", block) for i, block in enumerate(module)]
    raise SpecError(f"cannot find the {n_blocks} transformer blocks in {type(model).__name__}")


def _head_output(model: nn.Module) -> Any:
    def forward(pixels_bchw: torch.Tensor) -> torch.Tensor:
        output = model(pixel_values=pixels_bchw)
        for field in ("logits", "pooler_output"):
            value = getattr(output, field, None)
            if value is not None:
                return value
        return output.last_hidden_state[:, 0]

    return forward


@register_provider("hf", HF_OPTIONS)
def load_hf(request: LoadRequest) -> Backbone:
    # a hub repo's config and image processor are read from the hub even for random init
    with nullcontext() if Path(request.spec.name).is_dir() else hub_offline_when_unreachable():
        return _load_hf(request)


def _load_hf(request: LoadRequest) -> Backbone:
    import transformers

    repo = request.spec.name

    def create(pretrained: bool) -> nn.Module:
        model_class, build_config = _model_class(transformers.AutoConfig.from_pretrained(repo, **_NO_REMOTE_CODE))
        unknown = sorted(key for key in request.spec.options if not hasattr(build_config, key))
        if unknown:
            raise SpecError(f"model spec {shorten(request.spec.text)!r}: {type(build_config).__name__} has no fields {unknown}")
        build_config.update(request.spec.options)
        if pretrained:
            model = model_class.from_pretrained(repo, config=build_config, **_NO_REMOTE_CODE)
        elif hasattr(model_class, "from_config"):
            model = model_class.from_config(build_config)
        else:
            model = model_class(build_config)
        # transformers 5 builds in the dtype the config names (often bfloat16 or float16 on the hub);
        # every backbone computes in float32, like timm and open_clip models do
        return model.float()

    model: Any = build_model(request, f"transformers from {repo!r}", create)
    config = model.config
    preprocess = hf_preprocess(repo, config)
    forward = _head_output(model)
    blocks = _encoder_blocks(model, int(config.num_hidden_layers))
    layers = probe_layers(blocks, forward, preprocess.size_hw, _sequence_hint(config, preprocess.size_hw))
    id2label: dict[int, str] = getattr(config, "id2label", None) or {}
    has_head = hasattr(model, "classifier") and bool(id2label)
    class_names = [id2label[i] for i in range(len(id2label))] if has_head else None
    return Backbone(request.spec.text, model, layers, preprocess, forward, class_names=class_names)
