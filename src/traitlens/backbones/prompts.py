"""Extra tokens appended to a transformer block's input and dropped from its output (deep visual
prompt tuning through the layer abstraction).

Inside the block the appended tokens attend and are attended to like the model's own; after it
they are removed before any other hook or layer sees the output, so captures, edits and token
layouts keep the model's own (b, t, d) tokens. They go at the end of the sequence, so the prefix
and patch positions of a ``TokenLayout`` stay where they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from traitlens.backbones.backbone import Backbone, Layer
from traitlens.backbones.codecs import FeatureMapCodec, SequenceCodec, SequenceFirstCodec, TokenCodec
from traitlens.errors import LayerError, first_line

Tokens = torch.Tensor | Callable[[], torch.Tensor]
"""Appended tokens, or what gives them when the block runs."""


@contextmanager
def appended_tokens(backbone: Backbone, tokens_by_layer: Mapping[str, Tokens]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each listed layer's block (by name or index) takes its input tokens with
    ``tokens_by_layer[layer]`` — (p, d), shared by the batch, or (b, p, d) — appended at the end,
    and its output without them. The yielded dict receives, per layer name, the block's outputs at
    the appended positions (b, p, d), in the autograd graph. A callable value is asked for the
    tokens at each forward (shallow prompts: a block takes what the block before it gave out)."""
    outputs: dict[str, torch.Tensor] = {}
    appenders = _appenders(backbone, tokens_by_layer, outputs)
    with ExitStack() as stack:
        for appender in appenders:
            module = appender.layer.module
            stack.callback(module.register_forward_pre_hook(appender.append, with_kwargs=True).remove)
            # first of the layer's forward hooks, so captures and edits opened before this block see the model's tokens only
            stack.callback(module.register_forward_hook(appender.strip, prepend=True).remove)
        yield outputs


def check_appended_tokens(backbone: Backbone, layers: Sequence[str | int]) -> None:
    """One forward of a zero image with a zero token appended at each of ``layers``; a model whose
    blocks refuse the longer sequence (rotary position embeddings, fixed attention masks) is one
    LayerError line."""
    names = backbone.resolve_layers(list(layers))
    if not names:
        raise LayerError(f"no layers given to append tokens to in {backbone.spec}")
    parameter = next(backbone.model.parameters())
    zero_tokens = {name: torch.zeros(1, backbone.layer(name).width, dtype=parameter.dtype, device=parameter.device) for name in names}
    pixels_bchw = torch.zeros(1, 3, *backbone.preprocess.size_hw, dtype=parameter.dtype, device=parameter.device)
    with appended_tokens(backbone, zero_tokens), torch.no_grad():
        try:
            backbone.run_until(pixels_bchw, names[-1])
        except LayerError:  # already one line of ours (a batch that does not fit, say)
            raise
        except Exception as error:  # models fail on a longer sequence in many ways; one line says which
            raise LayerError(f"the blocks of {backbone.spec} do not take extra tokens ({first_line(error)})") from error


@dataclass
class _Appender:
    """The two hooks of one layer: append before its block, strip (and keep) after it."""

    layer: Layer
    input_codec: TokenCodec
    tokens: Tokens
    """(p, d) or (b, p, d), or what gives them."""
    outputs: dict[str, torch.Tensor]
    n_model_tokens: int = 0
    """The model's own tokens in the forward running now: where the appended ones start."""

    def append(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            sequence = args[0]
        elif "hidden_states" in kwargs:
            sequence = kwargs["hidden_states"]
        else:
            raise LayerError(f"layer {self.layer.name} was called without a token sequence (a first argument or hidden_states)")
        tokens_btd = self.input_codec.to_tokens(sequence)
        self.n_model_tokens = tokens_btd.shape[1]
        longer = self.input_codec.from_tokens(torch.cat([tokens_btd, self._batched(tokens_btd)], dim=1), like=sequence)
        return ((longer, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": longer})

    def strip(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        tokens_btd = self.layer.codec.to_tokens(output)
        self.outputs[self.layer.name] = tokens_btd[:, self.n_model_tokens :]
        return self.layer.codec.from_tokens(tokens_btd[:, : self.n_model_tokens], like=output)

    def _batched(self, like_btd: torch.Tensor) -> torch.Tensor:
        """The appended tokens as (b, p, d) in the sequence's dtype and device."""
        tokens = (self.tokens() if callable(self.tokens) else self.tokens).to(like_btd)
        if tokens.dim() == 2:
            return tokens.expand(like_btd.shape[0], -1, -1)
        if tokens.shape[0] != like_btd.shape[0]:
            raise LayerError(f"the tokens appended to layer {self.layer.name} are for a batch of {tokens.shape[0]}, "
                             f"the model runs a batch of {like_btd.shape[0]}")
        return tokens


def _appenders(backbone: Backbone, tokens_by_layer: Mapping[str, Tokens], outputs: dict[str, torch.Tensor]) -> list[_Appender]:
    """One appender per layer, filling ``outputs``; every layer and tensor checked before any hook goes in."""
    appenders: dict[str, _Appender] = {}
    for key, tokens in tokens_by_layer.items():
        layer = backbone.layer(key)
        if layer.name in appenders:
            raise LayerError(f"layer {layer.name} of {backbone.spec} is given twice for appended tokens")
        if not callable(tokens):
            _check_tokens(tokens, layer)
        appenders[layer.name] = _Appender(layer, _input_codec(layer, backbone.spec), tokens, outputs)
    return list(appenders.values())


def _input_codec(layer: Layer, spec: str) -> TokenCodec:
    """How a block's token input reads as (b, t, d): (t, b, d) for sequence-first blocks, else as it is
    (a block that returns a tuple still takes a plain tensor)."""
    if isinstance(layer.codec, FeatureMapCodec):
        raise LayerError(f"layer {layer.name} of {spec}: its output is a feature map, not a token sequence; "
                         "prompts need a transformer's token sequence")
    return layer.codec if isinstance(layer.codec, SequenceFirstCodec) else SequenceCodec()


def _check_tokens(tokens: Any, layer: Layer) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() not in (2, 3) or tokens.shape[-1] != layer.width:
        got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise LayerError(f"tokens appended to layer {layer.name} must be (p, {layer.width}) or (b, p, {layer.width}), got {got}")
