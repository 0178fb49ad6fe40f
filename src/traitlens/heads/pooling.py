"""One vector per image from a layer's tokens: the CLS token, or the mean of the patch tokens.

The same function pools tokens read from a store (any stored token kind) and tokens captured from
a live forward pass (all tokens), so a probe sees identical features in training and in use.
"""

from __future__ import annotations

from typing import Literal

import torch

from traitlens.backbones.layout import TokenLayout, TokenSelection
from traitlens.heads.errors import HeadError

Pooling = Literal["cls", "mean"]
POOLINGS: tuple[Pooling, ...] = ("cls", "mean")


def check_pooling(layout: TokenLayout, selection: TokenSelection, pooling: Pooling, where: str) -> None:
    """Refuse a pooling the tokens cannot give; ``where`` names the tokens in the message."""
    if pooling == "cls":
        if not layout.has_cls:
            raise HeadError(f"{where} has no CLS token; use --pooling mean")
        if selection == "patch":
            raise HeadError(f"{where} holds only patch tokens; CLS pooling needs a store extracted with --tokens cls or all "
                            "(or use --pooling mean)")
    elif pooling == "mean":
        if selection == "cls" or layout.n_patches == 0:
            raise HeadError(f"{where} holds no patch tokens; mean pooling needs --tokens patch or all (or use --pooling cls)")
    else:
        raise HeadError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def pool_tokens(tokens_btd: torch.Tensor, layout: TokenLayout, selection: TokenSelection, pooling: Pooling) -> torch.Tensor:
    """(b, t, d) tokens of kind ``selection`` -> (b, d) float32 features, for a pooling that
    :func:`check_pooling` accepted."""
    if pooling == "cls":
        return tokens_btd[:, 0].float()  # the CLS token leads both the "cls" and "all" selections
    return tokens_btd[:, layout.first_patch(selection):].float().mean(dim=1)
