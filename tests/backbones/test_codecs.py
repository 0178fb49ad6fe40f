"""Codecs turn each kind of module output into ``tokens_btd`` and back, losslessly."""

from __future__ import annotations

import torch

from traitlens.backbones.codecs import (
    FeatureMapCodec,
    SequenceCodec,
    SequenceFirstCodec,
    TupleFirstCodec,
)


def test_sequence_codec_is_the_identity() -> None:
    tokens_btd = torch.randn(2, 5, 4)
    codec = SequenceCodec()

    assert codec.to_tokens(tokens_btd) is tokens_btd
    assert codec.from_tokens(tokens_btd, like=tokens_btd) is tokens_btd


def test_sequence_first_codec_transposes_both_ways() -> None:
    output_tbd = torch.randn(5, 2, 4)
    codec = SequenceFirstCodec()

    tokens_btd = codec.to_tokens(output_tbd)
    assert tokens_btd.shape == (2, 5, 4)
    assert torch.equal(tokens_btd[1, 3], output_tbd[3, 1])
    assert torch.equal(codec.from_tokens(tokens_btd, like=output_tbd), output_tbd)


def test_tuple_first_codec_keeps_the_rest_and_the_container_type() -> None:
    extra = torch.randn(3)
    codec = TupleFirstCodec()
    for container in (tuple, list):
        output = container((torch.randn(2, 5, 4), extra, None))
        edited = codec.from_tokens(torch.zeros(2, 5, 4), like=output)

        assert type(edited) is container
        assert torch.equal(edited[0], torch.zeros(2, 5, 4))
        assert edited[1] is extra and edited[2] is None
        assert codec.to_tokens(output) is output[0]


def test_feature_map_tokens_are_pixels_in_row_major_order() -> None:
    map_bchw = torch.randn(2, 3, 4, 5)
    codec = FeatureMapCodec()

    tokens_btd = codec.to_tokens(map_bchw)

    assert tokens_btd.shape == (2, 20, 3)
    row, col = 2, 3
    assert torch.equal(tokens_btd[1, row * 5 + col], map_bchw[1, :, row, col])
    assert torch.equal(codec.from_tokens(tokens_btd, like=map_bchw), map_bchw)


def test_channels_last_feature_map_round_trip() -> None:
    map_bhwc = torch.randn(2, 4, 5, 3)
    codec = FeatureMapCodec(channels_last=True)

    tokens_btd = codec.to_tokens(map_bhwc)

    assert tokens_btd.shape == (2, 20, 3)
    assert torch.equal(tokens_btd[0, 1 * 5 + 4], map_bhwc[0, 1, 4])
    assert torch.equal(codec.from_tokens(tokens_btd, like=map_bhwc), map_bhwc)


def test_feature_map_edit_lands_on_the_right_pixel() -> None:
    map_bchw = torch.zeros(1, 2, 3, 3)
    codec = FeatureMapCodec()
    tokens_btd = codec.to_tokens(map_bchw).clone()
    tokens_btd[0, 1 * 3 + 2] = torch.tensor([7.0, 8.0])

    edited = codec.from_tokens(tokens_btd, like=map_bchw)

    assert edited[0, :, 1, 2].tolist() == [7.0, 8.0]
    assert edited.abs().sum() == 15.0
