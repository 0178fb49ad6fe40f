"""``open_clip:ARCH/PRETRAINED``, ``open_clip:hf-hub:ORG/REPO`` or ``open_clip:local-dir:PATH`` —
CLIP-style models (BioCLIP too).

The whole CLIP model is kept, text tower included, so zero-shot heads can be built from prompts;
``forward`` returns the image embedding. Spec options go to ``open_clip.create_model`` (for
example ``force_image_size=224``, or whole ``vision_cfg`` / ``text_cfg`` dicts as JSON).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.probe import SequenceHint, probe_layers
from traitlens.backbones.spec import LoadRequest, register_provider
from traitlens.backbones.timm_provider import timm_layers_and_hint
from traitlens.backbones.weights import build_model
from traitlens.errors import SpecError

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
_SCHEMAS = (HF_HUB, LOCAL_DIR)
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def split_open_clip_name(name: str, pretrained: bool) -> tuple[str, str | None]:
    """``ViT-B-16/openai`` -> (``ViT-B-16``, ``openai``); ``hf-hub:org/repo`` and
    ``local-dir:path`` name the architecture and the weights at once."""
    if name.startswith(_SCHEMAS):
        return name, None
    arch, _, tag = name.partition("/")
    if pretrained and not tag:
        raise SpecError(f"open_clip spec needs ARCH/PRETRAINED (e.g. open_clip:ViT-B-16/openai), got {name!r}")
    return arch, tag or None


def _tag_preprocess(arch: str, tag: str | None) -> dict[str, Any]:
    """The preprocessing a pretrained tag was trained with. open_clip applies it only when it
    downloads the tag's weights; a model built for a local weights file needs it too."""
    import open_clip

    if tag is None:
        return {}
    config = open_clip.get_pretrained_cfg(arch, tag)
    return {key: config[key] for key in _PREPROCESS_KEYS if config.get(key) is not None}


def open_clip_preprocess(visual: Any) -> Preprocess:
    config = getattr(visual, "preprocess_cfg", {})
    size = config.get("size", visual.image_size)
    height, width = (size, size) if isinstance(size, int) else size
    return Preprocess(
        size_hw=(int(height), int(width)),
        resize=int(min(height, width)),
        mean=tuple(config.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(config.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=config.get("interpolation", "bicubic"),
        resize_mode="shortest" if config.get("resize_mode", "shortest") == "shortest" else "squash",
    )


def _visual_layers(visual: Any) -> tuple[list[tuple[str, nn.Module]], SequenceHint | None]:
    if hasattr(visual, "trunk"):  # timm image tower
        return timm_layers_and_hint(visual.trunk, prefix="visual.trunk.")
    if hasattr(visual, "transformer"):  # open_clip's own ViT
        blocks = visual.transformer.resblocks
        grid = tuple(visual.grid_size)
        hint = SequenceHint(n_prefix=1, has_cls=True, grid_hw=(int(grid[0]), int(grid[1])))
        return [(f"visual.transformer.resblocks.{i}", block) for i, block in enumerate(blocks)], hint
    # ModifiedResNet (RN50 and friends): its stages are feature maps
    return [(f"visual.{name}", module) for name, module in visual.named_children() if name.startswith("layer")], None


@register_provider("open_clip")
def load_open_clip(request: LoadRequest) -> Backbone:
    import open_clip

    arch, tag = split_open_clip_name(request.spec.name, request.pretrained and request.weights is None)
    if not arch.startswith(_SCHEMAS) and arch not in open_clip.list_models():
        raise SpecError(f"open_clip has no architecture {arch!r} (see open_clip.list_models())")

    def create(pretrained: bool) -> nn.Module:
        options = dict(request.spec.options)
        if pretrained:
            return open_clip.create_model(arch, pretrained=tag, **options)
        if arch.startswith(_SCHEMAS):  # these load the weights they find unless told not to
            options.setdefault("load_weights", False)
        tag_preprocess = _tag_preprocess(arch, tag)
        if tag_preprocess:
            options["force_preprocess_cfg"] = {**tag_preprocess, **options.get("force_preprocess_cfg", {})}
        return open_clip.create_model(arch, pretrained=None, **options)

    model: Any = build_model(request, f"open_clip pretrained {tag or arch!r}", create)
    preprocess = open_clip_preprocess(model.visual)
    candidates, hint = _visual_layers(model.visual)
    layers = probe_layers(candidates, model.encode_image, preprocess.size_hw, hint)
    return Backbone(request.spec.text, model, layers, preprocess, model.encode_image)
