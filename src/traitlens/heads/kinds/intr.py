"""``--kind intr``: INTR (Paul et al., ICLR 2024) as a head on any frozen backbone.

One learnable query per class goes through a small transformer decoder whose cross-attention
reads the patch tokens of ``--layer`` (projected to the decoder's width, plus a learned position
embedding per patch, so a CNN's feature map works too); one presence vector shared by all classes
scores each class query's output, which gives that class's logit. The last decoder layer's
cross-attention of a class query, per head, is the class's map. The original trains a DETR
encoder-decoder; here the backbone stays frozen, so a training step runs it without a graph.

Attention is computed here rather than by ``nn.MultiheadAttention`` because the maps need each
head's weights and the trait ranking needs to change them (head blurring) before they are used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from traitlens.backbones import Backbone
from traitlens.heads.errors import HeadError
from traitlens.heads.kinds.settings import int_setting
from traitlens.heads.trainable import ClassQueryHead, blur_rows, register_head_kind

BlurEdit = tuple[torch.Tensor, torch.Tensor] | None


class _Attention(nn.Module):
    """Multi-head attention of queries over keys that returns (and may blur) its weights."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

    def _heads(self, x_bnd: torch.Tensor) -> torch.Tensor:
        b, n, d = x_bnd.shape
        return x_bnd.reshape(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, queries_bqd: torch.Tensor, keys_bkd: torch.Tensor, blurred: BlurEdit = None) -> tuple[torch.Tensor, torch.Tensor]:
        q_bhqe, k_bhke, v_bhke = self._heads(self.query(queries_bqd)), self._heads(self.key(keys_bkd)), self._heads(self.value(keys_bkd))
        probs_bhqk = (q_bhqe @ k_bhke.transpose(-1, -2) * q_bhqe.shape[-1] ** -0.5).softmax(-1)
        if blurred is not None:
            targets_b, blurred_bh = blurred
            probs_bhqk = blur_rows(probs_bhqk, targets_b.to(probs_bhqk.device), blurred_bh)
        attended_bqd = (probs_bhqk @ v_bhke).transpose(1, 2).flatten(2)
        return self.out(attended_bqd), probs_bhqk


class _DecoderLayer(nn.Module):
    """Pre-norm: the class queries attend to each other, then to the patches, then an MLP."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attention = _Attention(width, n_heads)
        self.cross_attention = _Attention(width, n_heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, queries_bcd: torch.Tensor, memory_bpd: torch.Tensor, blurred: BlurEdit = None) -> tuple[torch.Tensor, torch.Tensor]:
        normed_bcd = self.norm_self(queries_bcd)
        queries_bcd = queries_bcd + self.self_attention(normed_bcd, normed_bcd)[0]
        attended_bcd, probs_bhcp = self.cross_attention(self.norm_cross(queries_bcd), memory_bpd, blurred)
        queries_bcd = queries_bcd + attended_bcd
        return queries_bcd + self.mlp(self.norm_mlp(queries_bcd)), probs_bhcp


@register_head_kind
class INTRHead(ClassQueryHead):
    kind = "intr"
    summary = ("INTR: one query per class in a transformer decoder over --layer's patch tokens; one shared presence "
               "vector scores each query; its cross-attention, per head, is the class's map (any backbone)")
    options = ("decoder_layers", "decoder_width", "decoder_heads")

    def __init__(self, class_names: tuple[str, ...], layer: str, backbone: Backbone, n_layers: int, width: int, n_heads: int) -> None:
        super().__init__(class_names, layer)
        source = backbone.layer(layer)
        self.layout = source.layout
        self.n_layers, self.width, self.n_heads = n_layers, width, n_heads
        self.input = nn.Sequential(nn.LayerNorm(source.width), nn.Linear(source.width, width))
        self.position_pd = nn.Parameter(torch.randn(source.layout.n_patches, width) * 0.02)
        self.queries_cd = nn.Parameter(torch.randn(len(class_names), width) * 0.02)
        self.decoder = nn.ModuleList(_DecoderLayer(width, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.presence = nn.Linear(width, 1)

    @classmethod
    def build(cls, backbone: Backbone, class_names: tuple[str, ...], layer: str, settings: dict[str, Any]) -> ClassQueryHead:
        unknown = set(settings) - {"layers", "width", "heads"}
        if unknown:
            raise HeadError(f"unknown intr head settings: {', '.join(sorted(map(str, unknown)))}")
        n_layers, width = int_setting(settings, "layers", 2), int_setting(settings, "width", 256)
        n_heads = int_setting(settings, "heads", 8)
        if width % n_heads:
            raise HeadError(f"the decoder width ({width}) must be a multiple of its heads ({n_heads})")
        if backbone.layer(layer).layout.n_patches < 1:
            raise HeadError(f"layer {layer} of {backbone.spec} has no patch tokens for the class queries to attend to")
        return cls(class_names, layer, backbone, n_layers, width, n_heads)

    @classmethod
    def settings_from_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``--decoder-layers/-width/-heads`` as the settings ``head.json`` keeps."""
        return {key.removeprefix("decoder_"): value for key, value in options.items()}

    def settings(self) -> dict[str, Any]:
        return {"layers": self.n_layers, "width": self.width, "heads": self.n_heads}

    def _memory(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        with backbone.capture(self.layer, detach=False) as captured:
            backbone.run_until(pixels_bchw, self.layer)
        return self.layout.select(captured[self.layer], "patch")

    def _decode(self, patches_bpd: torch.Tensor, blurred: BlurEdit) -> tuple[torch.Tensor, torch.Tensor]:
        memory_bpd = self.input(patches_bpd.to(self.position_pd.dtype)) + self.position_pd  # the model may run in half precision
        queries_bcd = self.queries_cd.expand(len(memory_bpd), -1, -1)
        probs_bhcp = torch.empty(0)
        for number, layer in enumerate(self.decoder):
            last = number == len(self.decoder) - 1
            queries_bcd, probs_bhcp = layer(queries_bcd, memory_bpd, blurred if last else None)
        return self.presence(self.norm(queries_bcd)).squeeze(-1), probs_bhcp

    def logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return self._decode(self._memory(backbone, pixels_bchw), None)[0]

    def training_logits(self, backbone: Backbone, pixels_bchw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the backbone is frozen: only the decoder needs a graph
            patches_bpd = self._memory(backbone, pixels_bchw)
        return self._decode(patches_bpd, None)[0]

    def attention(self, backbone: Backbone, pixels_bchw: torch.Tensor,
                  blurred: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._decode(self._memory(backbone, pixels_bchw), blurred)


