"""Find each candidate layer's codec, width and token layout by running one small forward."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from traitlens.backbones.backbone import Layer
from traitlens.backbones.codecs import (
    FeatureMapCodec,
    SequenceCodec,
    SequenceFirstCodec,
    TokenCodec,
    TupleFirstCodec,
)
from traitlens.backbones.layout import TokenLayout

_PROBE_BATCH = 2  # two images tell a batch-first (b, t, d) output from a sequence-first (t, b, d) one


@dataclass(frozen=True)
class SequenceHint:
    """What a provider knows about a transformer's tokens that shapes alone cannot tell."""

    n_prefix: int
    has_cls: bool
    grid_hw: tuple[int, int] | None = None


def _sequence_codec(output: Any) -> TokenCodec | None:
    tensor = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
        return None
    base: TokenCodec = SequenceCodec() if tensor.shape[0] == _PROBE_BATCH else SequenceFirstCodec()
    return TupleFirstCodec() if isinstance(output, tuple | list) else base


def _grid_for(n_patches: int, hint: SequenceHint) -> tuple[int, int]:
    if hint.grid_hw is not None and hint.grid_hw[0] * hint.grid_hw[1] == n_patches:
        return hint.grid_hw
    side = math.isqrt(n_patches)
    return (side, side) if side * side == n_patches else (1, n_patches)


@torch.inference_mode()
def probe_layers(
    candidates: Sequence[tuple[str, nn.Module]],
    forward_fn: Callable[[torch.Tensor], Any],
    size_hw: tuple[int, int],
    sequence_hint: SequenceHint | None = None,
    channels_last: bool = False,
) -> list[Layer]:
    """Layers for the candidates whose outputs are token sequences (with a hint) or feature maps.

    Candidates whose output is neither (pooling, flattening) are left out.
    """
    outputs: dict[str, Any] = {}
    handles = []
    try:
        for name, module in candidates:
            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                outputs[name] = out
            handles.append(module.register_forward_hook(hook))
        forward_fn(torch.zeros(_PROBE_BATCH, 3, *size_hw))
    finally:
        for handle in handles:
            handle.remove()

    layers = []
    for name, module in candidates:
        output = outputs.get(name)
        codec: TokenCodec | None
        if isinstance(output, torch.Tensor) and output.ndim == 4 and sequence_hint is None:
            codec = FeatureMapCodec(channels_last=channels_last)
            tokens_btd = codec.to_tokens(output)
            h, w = (output.shape[1:3] if channels_last else output.shape[2:4])
            layout = TokenLayout(n_prefix=0, grid_hw=(int(h), int(w)), has_cls=False)
        elif sequence_hint is not None and (codec := _sequence_codec(output)) is not None:
            tokens_btd = codec.to_tokens(output)
            n_patches = tokens_btd.shape[1] - sequence_hint.n_prefix
            layout = TokenLayout(sequence_hint.n_prefix, _grid_for(n_patches, sequence_hint), sequence_hint.has_cls)
        else:
            continue
        layers.append(Layer(name=name, module=module, codec=codec, layout=layout, width=int(tokens_btd.shape[-1])))
    return layers
