"""Tiny real architectures with random weights, shared by the backbone tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traitlens.backbones import Backbone

TINY_VIT = "timm:vit_tiny_patch16_224?img_size=32&depth=2&num_classes=5"
TINY_DINOV2_REG = "timm:vit_small_patch14_reg4_dinov2?img_size=28&depth=2&embed_dim=32&num_heads=2"
TINY_SIGLIP = "timm:vit_base_patch16_siglip_224?img_size=32&depth=2&embed_dim=32&num_heads=2"

_HF_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def compact_json(value: Any) -> str:
    """JSON without spaces, for spec options."""
    return json.dumps(value, separators=(",", ":"))


def tiny_open_clip_spec(name: str = "ViT-B-16") -> str:
    """An open_clip architecture shrunk through its ``vision_cfg`` / ``text_cfg`` options."""
    vision = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
    text = {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
    return f"open_clip:{name}?embed_dim=16&vision_cfg={compact_json(vision)}&text_cfg={compact_json(text)}"


def hf_config(kind: str) -> Any:
    """A tiny transformers config of one model family."""
    import transformers

    if kind == "dinov2":
        return transformers.Dinov2Config(image_size=28, patch_size=14, **_HF_SMALL)
    if kind == "dinov2_registers":
        return transformers.Dinov2WithRegistersConfig(image_size=28, patch_size=14, num_register_tokens=4, **_HF_SMALL)
    if kind == "clip_vision":
        return transformers.CLIPVisionConfig(image_size=32, patch_size=16, projection_dim=16, **_HF_SMALL)
    if kind == "siglip_vision":
        return transformers.SiglipVisionConfig(image_size=32, patch_size=16, **_HF_SMALL)
    if kind == "clip":
        text = {"vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        return transformers.CLIPConfig(
            text_config={**text, **_HF_SMALL},
            vision_config={"image_size": 32, "patch_size": 16, **_HF_SMALL},
            projection_dim=16,
        )
    if kind == "vit_classifier":
        return transformers.ViTConfig(
            image_size=32, patch_size=16, architectures=["ViTForImageClassification"],
            id2label={0: "ant", 1: "bee", 2: "cat"}, label2id={"ant": 0, "bee": 1, "cat": 2}, **_HF_SMALL,
        )
    raise ValueError(kind)


def write_hf_config(directory: Path, kind: str) -> Path:
    """A directory holding only ``config.json``, as ``hf:DIR`` reads it."""
    hf_config(kind).save_pretrained(directory)
    return directory


class ForwardRecorder:
    """Records a module's output with a hook of its own, independent of the Backbone's hooks."""

    def __init__(self, module: nn.Module) -> None:
        self.outputs: list[Any] = []
        self._handle = module.register_forward_hook(lambda _m, _i, output: self.outputs.append(output))

    def __enter__(self) -> ForwardRecorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.remove()


def hook_count(module: nn.Module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def all_hook_counts(backbone: Backbone) -> int:
    return sum(hook_count(module) for module in backbone.model.modules())


def pixels(backbone: Backbone, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random preprocessed-looking pixels at the backbone's input size."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *backbone.preprocess.size_hw, generator=generator)


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write weights as safetensors or, for any other suffix, with ``torch.save``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def perturbed_state(backbone: Backbone, scale: float = 0.1, seed: int = 7) -> dict[str, torch.Tensor]:
    """The backbone's weights plus noise: unlike the seed-0 random init, so loading them shows."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: value + scale * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in backbone.model.state_dict().items()
    }


class CodeRunningPayload:
    """Unpickling this calls ``Path.touch`` on ``marker``: code run by merely reading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


_TOKENIZED_VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
# the full CLIP vocabulary, so open_clip's own tokenizer fits the text tower; everything else is tiny
_TOKENIZED_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
CLIP_WITH_TOKENIZER = (f"open_clip:ViT-B-16?embed_dim=16&vision_cfg={compact_json(_TOKENIZED_VISION)}"
                       f"&text_cfg={compact_json(_TOKENIZED_TEXT)}")
"""A tiny random-init CLIP whose text tower takes open_clip's real tokenizer (zero-shot, concepts)."""
