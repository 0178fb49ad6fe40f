"""One probing forward finds each candidate layer's codec, width and token layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from traitlens.backbones.probe import SequenceHint, probe_layers

HINT = SequenceHint(n_prefix=1, has_cls=True, grid_hw=(2, 2))


class _TupleBlock(nn.Module):
    """Returns (tokens, extra) like older transformers layers."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(tokens), tokens.mean()


class _ToyTransformer(nn.Module):
    """CLS + a 2x2 patch grid of width 8 through two blocks, batch-first or sequence-first."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.patch_embed = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList(
            [nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first), _TupleBlock(8)]
        )
        self.unused = nn.Linear(8, 8)

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        patches_btd = self.patch_embed(pixels_bchw).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(patches_btd), -1, -1), patches_btd], dim=1)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        tokens = self.blocks[0](tokens)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        tokens, _ = self.blocks[1](tokens)
        return tokens[:, 0]


def _candidates(model: _ToyTransformer) -> list[tuple[str, nn.Module]]:
    return [("patch_embed", model.patch_embed), ("blocks.0", model.blocks[0]),
            ("blocks.1", model.blocks[1]), ("unused", model.unused)]


@pytest.mark.parametrize(("batch_first", "first_codec"), [(True, "sequence"), (False, "sequence_first")])
def test_transformer_blocks_get_codecs_and_layouts(batch_first: bool, first_codec: str) -> None:
    model = _ToyTransformer(batch_first).eval()

    layers = probe_layers(_candidates(model), model, (8, 8), HINT)

    # the patch embedding is a feature map but the model is a transformer; the unused module never ran
    assert [layer.name for layer in layers] == ["blocks.0", "blocks.1"]
    assert [layer.codec.name for layer in layers] == [first_codec, "tuple_first"]
    for layer in layers:
        assert layer.layout.n_prefix == 1 and layer.layout.has_cls and layer.layout.grid_hw == (2, 2)
        assert layer.width == 8


def test_sequence_first_tokens_decode_batch_first() -> None:
    model = _ToyTransformer(batch_first=False).eval()
    layer = probe_layers(_candidates(model), model, (8, 8), HINT)[0]
    seen: list[torch.Tensor] = []
    handle = model.blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    pixels = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        model(pixels)
    handle.remove()

    tokens_btd = layer.codec.to_tokens(seen[0])

    assert seen[0].shape == (5, 3, 8)
    assert tokens_btd.shape == (3, 5, 8)
    assert torch.equal(tokens_btd[2, 4], seen[0][4, 2])


def test_feature_maps_without_a_hint_are_grids_without_prefix() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    candidates = [(str(i), module) for i, module in enumerate(model)]

    layers = probe_layers(candidates, model, (10, 6))

    # the pooled (b, 4, 1, 1) map is still a map; the flattened (b, 4) output is not
    assert [layer.name for layer in layers] == ["0", "1", "2"]
    assert layers[0].layout.grid_hw == (5, 3) and layers[0].layout.n_prefix == 0
    assert not layers[0].layout.has_cls
    assert layers[2].layout.grid_hw == (1, 1)
    assert {layer.codec.name for layer in layers} == {"feature_map"}
    assert all(layer.width == 4 for layer in layers)


def test_channels_last_maps_read_height_and_width_from_the_middle() -> None:
    class _ChannelsLast(nn.Module):
        def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
            return pixels_bchw[:, :, :5, :7].permute(0, 2, 3, 1)

    model = _ChannelsLast()

    (layer,) = probe_layers([("stage", model)], model, (8, 8), channels_last=True)

    assert layer.layout.grid_hw == (5, 7) and layer.width == 3


def test_grid_falls_back_to_a_square_when_the_hint_does_not_fit() -> None:
    model = _ToyTransformer(batch_first=True).eval()
    wrong_hint = SequenceHint(n_prefix=1, has_cls=True, grid_hw=(3, 3))

    layers = probe_layers(_candidates(model), model, (8, 8), wrong_hint)

    assert layers[0].layout.grid_hw == (2, 2)


def test_grid_of_a_non_square_token_count_without_a_hint_is_one_row() -> None:
    model = _ToyTransformer(batch_first=True).eval()
    no_cls_hint = SequenceHint(n_prefix=0, has_cls=False)  # five tokens read as five patches

    layers = probe_layers(_candidates(model), model, (8, 8), no_cls_hint)

    assert layers[0].layout.grid_hw == (1, 5)


def test_probe_hooks_are_removed_even_when_the_forward_fails() -> None:
    model = _ToyTransformer(batch_first=True).eval()

    with pytest.raises(RuntimeError):
        probe_layers(_candidates(model), model, (3, 3), HINT)  # too small for the 4x4 patch conv

    assert all(not module._forward_hooks for module in model.modules())
    probe_layers(_candidates(model), model, (8, 8), HINT)
    assert all(not module._forward_hooks for module in model.modules())
