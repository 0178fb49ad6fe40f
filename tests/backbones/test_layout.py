"""Token layouts: prefix tokens (CLS, registers) first, then the patch grid in row-major order."""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from traitlens.backbones import TOKEN_SELECTIONS, TokenLayout, TokenSelection
from traitlens.errors import LayerError

DINO_REG = TokenLayout(n_prefix=5, grid_hw=(2, 3), has_cls=True)
SIGLIP = TokenLayout(n_prefix=0, grid_hw=(3, 3), has_cls=False)


def _numbered_tokens(layout: TokenLayout, batch: int = 2) -> torch.Tensor:
    """(b, t, 1) whose value is the token index, so a selection shows which tokens it kept."""
    return torch.arange(layout.n_tokens, dtype=torch.float32).repeat(batch, 1)[..., None]


def test_counts() -> None:
    assert (DINO_REG.n_patches, DINO_REG.n_tokens, DINO_REG.n_registers) == (6, 11, 4)
    assert (SIGLIP.n_patches, SIGLIP.n_tokens, SIGLIP.n_registers) == (9, 9, 0)
    assert TokenLayout(n_prefix=1, grid_hw=(4, 4), has_cls=True).n_registers == 0


def test_select_keeps_the_named_tokens() -> None:
    tokens_btd = _numbered_tokens(DINO_REG)

    assert DINO_REG.select(tokens_btd, "patch")[0, :, 0].tolist() == [5, 6, 7, 8, 9, 10]
    assert DINO_REG.select(tokens_btd, "cls")[0, :, 0].tolist() == [0]
    assert DINO_REG.select(tokens_btd, "all") is tokens_btd


@pytest.mark.parametrize(
    ("layout", "selection"),
    [(DINO_REG, selection) for selection in TOKEN_SELECTIONS] + [(SIGLIP, "patch"), (SIGLIP, "all")],
)
def test_tokens_per_image_matches_select(layout: TokenLayout, selection: TokenSelection) -> None:
    selected = layout.select(_numbered_tokens(layout, batch=3), selection)

    assert selected.shape == (3, layout.tokens_per_image(selection), 1)


def test_cls_of_a_layout_without_cls_is_a_layer_error() -> None:
    with pytest.raises(LayerError, match="no CLS token"):
        SIGLIP.select(_numbered_tokens(SIGLIP), "cls")


def test_dict_round_trip_survives_json() -> None:
    restored = TokenLayout.from_dict(json.loads(json.dumps(DINO_REG.to_dict())))

    assert restored == DINO_REG
    assert isinstance(restored.grid_hw, tuple)


def test_token_selections_match_the_type() -> None:
    assert TOKEN_SELECTIONS == get_args(TokenSelection)
