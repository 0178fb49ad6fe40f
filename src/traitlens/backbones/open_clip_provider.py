"""``open_clip:ARCH/PRETRAINED``, ``open_clip:hf-hub:ORG/REPO`` or ``open_clip:local-dir:PATH`` —
CLIP-style models (BioCLIP too).

The whole CLIP model is kept, text tower included, so zero-shot heads can be built from prompts;
``forward`` returns the image embedding. Spec options go to ``open_clip.create_model`` (for
example ``force_image_size=224``, or whole ``vision_cfg`` / ``text_cfg`` dicts as JSON), allow-listed
in :data:`OPEN_CLIP_OPTIONS`. PRETRAINED must be one of open_clip's tags for ARCH: open_clip would
also take a file path there, and local weights go through ``--weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from traitlens.backbones.backbone import Backbone, TextTower
from traitlens.backbones.preprocess import Preprocess
from traitlens.backbones.probe import SequenceHint, probe_layers
from traitlens.backbones.spec import (
    BOOLEAN,
    COUNT,
    COUNTS,
    NAME,
    NUMBER,
    POSITIVE,
    SIZE,
    LoadRequest,
    OptionType,
    json_object,
    one_of,
    register_provider,
)
from traitlens.backbones.timm_provider import timm_layers_and_hint
from traitlens.backbones.weights import build_model, hub_offline_when_unreachable
from traitlens.errors import SpecError

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
_SCHEMAS = (HF_HUB, LOCAL_DIR)
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")

# Architecture fields of open_clip's CLIPVisionCfg / CLIPTextCfg. Left out on purpose: fields that
# fetch weights or code by name (``timm_model_pretrained``, ``hf_model_name``, ``hf_tokenizer_name``).
_VISION_CFG = json_object(
    layers=COUNTS, width=POSITIVE, head_width=POSITIVE, mlp_ratio=NUMBER, patch_size=POSITIVE, image_size=SIZE,
    ls_init_value=NUMBER, patch_dropout=NUMBER, attentional_pool=BOOLEAN, no_ln_pre=BOOLEAN,
    final_ln_after_pool=BOOLEAN, pool_type=one_of("tok", "avg", "none"), timm_model_name=NAME,
    timm_pool=one_of("", "avg", "max", "avgmax", "token", "map"), timm_proj=one_of("", "linear", "mlp", "none"),
    timm_proj_bias=BOOLEAN, timm_drop=NUMBER, timm_drop_path=NUMBER,
)
_TEXT_CFG = json_object(
    context_length=POSITIVE, vocab_size=POSITIVE, width=POSITIVE, heads=POSITIVE, layers=COUNT, mlp_ratio=NUMBER,
    ls_init_value=NUMBER, embed_cls=BOOLEAN, pad_id=COUNT, no_causal_mask=BOOLEAN, final_ln_after_pool=BOOLEAN,
    pool_type=one_of("first", "last", "argmax", "none"), proj_bias=BOOLEAN,
)
OPEN_CLIP_OPTIONS: dict[str, OptionType] = {
    "embed_dim": POSITIVE, "force_image_size": SIZE, "force_quick_gelu": BOOLEAN, "force_patch_dropout": NUMBER,
    "force_context_length": POSITIVE, "vision_cfg": _VISION_CFG, "text_cfg": _TEXT_CFG,
}
"""What ``open_clip:NAME?...`` may set. ``create_model``'s other arguments load files or code
(``pretrained_image_path``, ``cache_dir``, ``jit``) or turn safe loading off (``weights_only``)."""


def split_open_clip_name(name: str, pretrained: bool) -> tuple[str, str | None]:
    """``ViT-B-16/openai`` -> (``ViT-B-16``, ``openai``); ``hf-hub:org/repo`` and
    ``local-dir:path`` name the architecture and the weights at once."""
    if name.startswith(_SCHEMAS):
        return name, None
    import open_clip

    arch, _, tag = name.partition("/")
    if pretrained and not tag:
        raise SpecError(f"open_clip spec needs ARCH/PRETRAINED (e.g. open_clip:ViT-B-16/openai), got {name!r}")
    if tag and not open_clip.get_pretrained_cfg(arch, tag):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise SpecError(f"open_clip has no pretrained tag {tag!r} for {arch!r} (known: {known}); "
                        "pass a local weights file with --weights PATH")
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


@register_provider("open_clip", OPEN_CLIP_OPTIONS)
def load_open_clip(request: LoadRequest) -> Backbone:
    import open_clip

    name = request.spec.name
    if not name.startswith(_SCHEMAS) and name.partition("/")[0] not in open_clip.list_models():
        raise SpecError(f"open_clip has no architecture {name.partition('/')[0]!r} (see open_clip.list_models())")
    arch, tag = split_open_clip_name(name, request.pretrained and request.weights is None)

    def create(pretrained: bool) -> nn.Module:
        options = dict(request.spec.options)
        if pretrained:
            return open_clip.create_model(arch, pretrained=tag, **options)
        if arch.startswith(_SCHEMAS):  # these load the weights they find unless told not to
            options["load_weights"] = False
        tag_preprocess = _tag_preprocess(arch, tag)
        if tag_preprocess:
            options["force_preprocess_cfg"] = tag_preprocess
        return open_clip.create_model(arch, pretrained=None, **options)

    # a hub architecture is read from the hub even for random init
    with hub_offline_when_unreachable() if arch.startswith(HF_HUB) else nullcontext():
        model: Any = build_model(request, f"open_clip pretrained {tag or arch!r}", create)
    preprocess = open_clip_preprocess(model.visual)
    candidates, hint = _visual_layers(model.visual)
    layers = probe_layers(candidates, model.encode_image, preprocess.size_hw, hint)
    return Backbone(request.spec.text, model, layers, preprocess, model.encode_image,
                    text_tower=_text_tower(model, arch, request.spec.text))


def _text_tower(model: Any, arch: str, spec_text: str) -> TextTower | None:
    """The model's text side, when it has one (open_clip also builds image-only towers)."""
    if not callable(getattr(model, "encode_text", None)) or not hasattr(model, "logit_scale"):
        return None

    def tokenize(prompts: Sequence[str]) -> torch.Tensor:
        """(n, context_length) token ids from the model's own tokenizer."""
        import open_clip

        try:
            tokenizer = open_clip.get_tokenizer(arch, context_length=model.context_length)
            ids_nl = tokenizer(list(prompts))
        except Exception as error:  # hub lookups and tokenizer files fail in many ways; one line says which
            raise SpecError(f"cannot tokenize prompts for {spec_text}: {str(error).splitlines()[0][:200]}") from error
        vocab_size = getattr(model, "vocab_size", None)
        if vocab_size is not None and int(ids_nl.max()) >= vocab_size:
            raise SpecError(f"the tokenizer of {arch} gives token ids up to {int(ids_nl.max())}, but the text tower of "
                            f"{spec_text} has a vocabulary of {vocab_size}")
        return ids_nl

    @torch.no_grad()
    def embed(prompts: Sequence[str]) -> torch.Tensor:
        ids_nl = tokenize(prompts).to(next(model.parameters()).device)
        return F.normalize(model.encode_text(ids_nl).float(), dim=-1)

    def logits(image_be: torch.Tensor, text_ce: torch.Tensor) -> torch.Tensor:
        logits_bc = model.logit_scale.exp() * image_be @ text_ce.to(image_be).T
        bias = getattr(model, "logit_bias", None)  # SigLIP's
        return logits_bc + bias if bias is not None else logits_bc

    return TextTower(embed, logits)
