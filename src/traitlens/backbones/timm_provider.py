"""``timm:NAME[?options]`` — any timm model: ViTs (CLS, registers) and CNNs.

NAME is a name in timm's registry (with an optional pretrained tag), never a ``hf-hub:`` or
``local-dir:`` source; options are architecture settings only (:data:`TIMM_OPTIONS`).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.probe import SequenceHint, probe_layers
from traitlens.backbones.spec import (
    BOOLEAN,
    COUNT,
    NAME,
    NUMBER,
    POSITIVE,
    SIZE,
    LoadRequest,
    OptionType,
    one_of,
    register_provider,
)
from traitlens.backbones.weights import build_model
from traitlens.errors import SpecError

TIMM_OPTIONS: dict[str, OptionType] = {
    "img_size": SIZE, "patch_size": POSITIVE, "depth": COUNT, "embed_dim": POSITIVE, "num_heads": POSITIVE,
    "mlp_ratio": NUMBER, "num_classes": COUNT, "class_token": BOOLEAN, "reg_tokens": COUNT,
    "no_embed_class": BOOLEAN, "global_pool": one_of("", "avg", "max", "avgmax", "catavgmax", "token", "map"),
    "qkv_bias": BOOLEAN, "init_values": NUMBER, "act_layer": NAME, "dynamic_img_size": BOOLEAN,
    "drop_rate": NUMBER, "drop_path_rate": NUMBER, "output_stride": POSITIVE,
}
"""What ``timm:NAME?...`` may set: keyword arguments of timm's model classes that shape the
architecture. ``create_model``'s own arguments load files (``checkpoint_path``,
``pretrained_cfg_overlay``, ``cache_dir``) and are never passed."""


def timm_preprocess(model: nn.Module) -> Preprocess:
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    _, height, width = config["input_size"]
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # an ``img_size`` option overrides the pretrained config's size
        height, width = int(img_size[0]), int(img_size[1])
    squash = config.get("crop_mode") == "squash"
    return Preprocess(
        size_hw=(height, width),
        resize=math.floor(min(height, width) / config.get("crop_pct", 1.0)),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config.get("interpolation", "bicubic"),
        resize_mode="squash" if squash else "shortest",
    )


def timm_sequence_hint(model: Any) -> SequenceHint | None:
    """Token layout facts for timm transformers; ``None`` for CNNs."""
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
        return None
    grid = tuple(getattr(model.patch_embed, "grid_size", ()) or ())
    return SequenceHint(
        n_prefix=int(model.num_prefix_tokens),
        has_cls=getattr(model, "cls_token", None) is not None,
        grid_hw=(int(grid[0]), int(grid[1])) if len(grid) == 2 else None,
    )


def timm_layers_and_hint(model: nn.Module, prefix: str = "") -> tuple[list[tuple[str, nn.Module]], SequenceHint | None]:
    """Candidate layers from timm's own ``feature_info`` (blocks for ViTs, stages for CNNs)."""
    modules = dict(model.named_modules())
    names = [info["module"] for info in getattr(model, "feature_info", [])]
    candidates = [(prefix + name, modules[name]) for name in names if name in modules]
    return candidates, timm_sequence_hint(model)


def imagenet_class_names(model: nn.Module) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]


@register_provider("timm", TIMM_OPTIONS)
def load_timm(request: LoadRequest) -> Backbone:
    import timm

    name = request.spec.name
    if not timm.is_model(name):
        # also refuses ``hf-hub:`` and ``local-dir:`` names: weights from a local file go through --weights
        raise SpecError(f"timm has no model {name!r} (see timm.list_models(); local weights: --weights PATH)")

    def create(pretrained: bool) -> nn.Module:
        return timm.create_model(name, pretrained=pretrained, **request.spec.options)

    model: Any = build_model(request, "the Hugging Face hub through timm", create)
    has_real_head = request.pretrained or request.weights is not None
    class_names = imagenet_class_names(model) if has_real_head and model.num_classes else None
    return timm_backbone(request.spec.text, model, timm_preprocess(model), class_names)


def timm_backbone(spec_text: str, model: Any, preprocess: Preprocess, class_names: list[str] | None) -> Backbone:
    """A built timm model as a Backbone: its ``feature_info`` layers, probed once."""
    candidates, hint = timm_layers_and_hint(model)
    channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
    layers = probe_layers(candidates, model, preprocess.size_hw, hint, channels_last=channels_last)
    return Backbone(spec_text, model, layers, preprocess, model, class_names=class_names)
