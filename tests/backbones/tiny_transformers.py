"""One tiny random-init ViT per kind of self-attention module traitlens reads, shared by the
attention and prompt tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.backbones.builders import tiny_open_clip_spec, write_hf_config
from traitlens.backbones import Backbone, Layer, Preprocess, TokenLayout, load_backbone
from traitlens.backbones.codecs import SequenceCodec, SequenceFirstCodec

TINY_TIMM_VIT = "timm:vit_tiny_patch16_224?img_size=32&depth=2&embed_dim=32&num_heads=2&num_classes=3"
TINY_EVA02 = "timm:eva02_tiny_patch14_224?img_size=28&depth=2&embed_dim=32&num_heads=2"
"""timm's Eva attention with rotary position embeddings: read like timm Attention, but its blocks
refuse extra tokens."""

HEADS = {"timm": 2, "open_clip": 2, "hf_vit": 2, "hf_dinov2": 2, "specimens": 4}
"""The attention heads of each tiny model (open_clip: width 64 / head_width 32)."""
KINDS = tuple(HEADS)


def load_tiny(kind: str, directory: Path) -> Backbone:
    """The tiny model of ``kind``; ``directory`` holds the config of an ``hf:`` one."""
    hf_kinds = {"hf_vit": "vit_classifier", "hf_dinov2": "dinov2"}
    specs = {"timm": TINY_TIMM_VIT, "open_clip": tiny_open_clip_spec(), "specimens": "traitlens:specimens-vit"}
    if kind in hf_kinds:
        return load_backbone(f"hf:{write_hf_config(directory / kind, hf_kinds[kind])}", pretrained=False)
    return load_backbone(specs[kind], pretrained=False)


def timm_probs(attention: nn.Module, x_btd: torch.Tensor) -> torch.Tensor:
    """timm Attention's probabilities for its input ``x_btd``, by hand (no q/k norm)."""
    b, t, _ = x_btd.shape
    q_bhtc, k_bhtc, _ = attention.qkv(x_btd).reshape(b, t, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)
    return (q_bhtc @ k_bhtc.transpose(-2, -1) * attention.scale).softmax(dim=-1)


def load_all_tiny(directory: Path) -> dict[str, Backbone]:
    """Every kind's tiny model, keyed by kind."""
    return {kind: load_tiny(kind, directory) for kind in KINDS}


class ToyBlock(nn.Module):
    """A residual block around an attention module, for calls no library makes the way these tests
    need (sequence-first MultiheadAttention with masks, transformers attention with a mask, refused
    variants). ``call``: ``mha`` (query, key, value and masks), ``hf`` (hidden states and a mask) or
    ``plain`` (the tokens alone)."""

    def __init__(self, attention: nn.Module, call: str = "mha") -> None:
        super().__init__()
        self.attention = attention
        self.call = call
        self.attn_mask: torch.Tensor | None = None
        self.key_padding_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        if self.call == "mha":
            return x + self.attention(x, x, x, need_weights=False, attn_mask=self.attn_mask,
                                      key_padding_mask=self.key_padding_mask)[0]
        if self.call == "hf":
            return x + self.attention(x, self.attn_mask)[0]
        return x + self.attention(x)


def toy_backbone(block: ToyBlock, width: int, n_tokens: int, sequence_first: bool = False, keyword: bool = False) -> Backbone:
    """A Backbone of one toy block whose "pixels" are already its tokens, (b, t, d), passed to the
    block as (t, b, d) when ``sequence_first``, as ``hidden_states=`` when ``keyword``."""
    codec = SequenceFirstCodec() if sequence_first else SequenceCodec()
    layer = Layer("block", block, codec, TokenLayout(0, (1, n_tokens), False), width)

    def forward(tokens_btd: torch.Tensor) -> torch.Tensor:
        sequence = tokens_btd.transpose(0, 1) if sequence_first else tokens_btd
        return block(hidden_states=sequence) if keyword else block(sequence)

    return Backbone("toy", nn.ModuleDict({"block": block}), [layer], Preprocess(size_hw=(1, n_tokens), resize=n_tokens), forward)
