"""Conversions between a module's raw output and ``tokens_btd``.

Providers differ in what a block returns: a (b, t, d) tensor, a tuple whose first item is one, a
(t, b, d) tensor, or a CNN feature map. A codec hides that so capture and edit code sees only tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class TokenCodec(Protocol):
    @property
    def name(self) -> str: ...

    def to_tokens(self, output: Any) -> torch.Tensor: ...

    def from_tokens(self, tokens_btd: torch.Tensor, like: Any) -> Any: ...


@dataclass(frozen=True)
class SequenceCodec:
    """Output is ``tokens_btd`` already."""

    name: str = "sequence"

    def to_tokens(self, output: Any) -> torch.Tensor:
        return output

    def from_tokens(self, tokens_btd: torch.Tensor, like: Any) -> Any:
        return tokens_btd


@dataclass(frozen=True)
class SequenceFirstCodec:
    """Output is (t, b, d), as in sequence-first transformers."""

    name: str = "sequence_first"

    def to_tokens(self, output: Any) -> torch.Tensor:
        return output.transpose(0, 1)

    def from_tokens(self, tokens_btd: torch.Tensor, like: Any) -> Any:
        return tokens_btd.transpose(0, 1)


@dataclass(frozen=True)
class TupleFirstCodec:
    """Output is a tuple (or list) whose first item is ``tokens_btd``; the rest passes through."""

    name: str = "tuple_first"

    def to_tokens(self, output: Any) -> torch.Tensor:
        return output[0]

    def from_tokens(self, tokens_btd: torch.Tensor, like: Any) -> Any:
        return type(like)((tokens_btd, *like[1:]))


@dataclass(frozen=True)
class FeatureMapCodec:
    """Output is a (b, c, h, w) map, or (b, h, w, c) when ``channels_last``; tokens are its pixels."""

    channels_last: bool = False
    name: str = "feature_map"

    def to_tokens(self, output: Any) -> torch.Tensor:
        bhwc = output if self.channels_last else output.permute(0, 2, 3, 1)
        return bhwc.flatten(1, 2)

    def from_tokens(self, tokens_btd: torch.Tensor, like: Any) -> Any:
        b = like.shape[0]
        h, w = like.shape[1:3] if self.channels_last else like.shape[2:4]
        bhwc = tokens_btd.reshape(b, h, w, tokens_btd.shape[-1])
        return bhwc if self.channels_last else bhwc.permute(0, 3, 1, 2)
