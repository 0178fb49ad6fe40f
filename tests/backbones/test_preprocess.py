"""Preprocessing geometry shared by images and masks, so patch labels line up with patch tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from traitlens.backbones import Preprocess
from traitlens.backbones.preprocess import HALF_MEAN, HALF_STD
from traitlens.errors import DataError

SHORTEST = Preprocess(size_hw=(16, 16), resize=18)
SQUASH = Preprocess(size_hw=(16, 24), resize=16, mean=HALF_MEAN, std=HALF_STD, resize_mode="squash")


def _halves_image(height: int, width: int) -> Image.Image:
    """White left half, black right half."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = 255
    return Image.fromarray(pixels)


def _halves_mask(height: int, width: int, left: int = 3, right: int = 9) -> np.ndarray:
    labels = np.full((height, width), right, dtype=np.int64)
    labels[:, : width // 2] = left
    return labels


@pytest.mark.parametrize("preprocess", [SHORTEST, SQUASH])
@pytest.mark.parametrize("size_hw", [(30, 50), (50, 30), (16, 16)])
def test_image_shape_and_dtype(preprocess: Preprocess, size_hw: tuple[int, int]) -> None:
    out = preprocess.image(_halves_image(*size_hw))

    assert out.shape == (3, *preprocess.size_hw)
    assert out.dtype == torch.float32


def test_uniform_image_is_normalized_per_channel() -> None:
    preprocess = Preprocess(size_hw=(8, 8), resize=10, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    image = Image.new("RGB", (20, 14), (51, 102, 204))

    out = preprocess.image(image)

    expected = [(51 / 255 - 0.1) / 0.5, (102 / 255 - 0.2) / 0.25, (204 / 255 - 0.3) / 0.125]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert out.std(dim=(1, 2)).max() < 1e-5


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_become_three_channels(mode: str) -> None:
    image = _halves_image(20, 30).convert(mode)

    out = SHORTEST.image(image)

    assert out.shape == (3, 16, 16)
    assert torch.equal(out, SHORTEST.image(image.convert("RGB")))


def test_mask_keeps_label_values_exactly_including_huge_ones() -> None:
    labels = _halves_mask(30, 50, left=2**40 + 1, right=16_777_217)  # 2**24 + 1 is not a float32

    out = SHORTEST.mask(labels)

    assert out.dtype == np.int64
    assert set(np.unique(out).tolist()) == {2**40 + 1, 16_777_217}


def test_mask_of_many_labels_only_contains_input_labels() -> None:
    labels = np.random.default_rng(0).integers(-5, 1000, size=(37, 53))

    out = SHORTEST.mask(labels)

    assert set(np.unique(out).tolist()) <= set(np.unique(labels).tolist())


def test_mask_picks_the_same_pixels_as_nearest_resize_of_small_labels() -> None:
    labels = np.random.default_rng(1).integers(0, 200, size=(37, 53)).astype(np.uint8)
    reference = tvf.center_crop(
        tvf.resize(torch.from_numpy(labels)[None], [18], interpolation=InterpolationMode.NEAREST_EXACT), [16, 16]
    )[0].numpy()

    assert np.array_equal(SHORTEST.mask(labels), reference.astype(np.int64))


@pytest.mark.parametrize("preprocess", [SHORTEST, SQUASH])
@pytest.mark.parametrize("size_hw", [(30, 50), (50, 30)])
def test_mask_follows_the_image_geometry(preprocess: Preprocess, size_hw: tuple[int, int]) -> None:
    image_chw = preprocess.image(_halves_image(*size_hw))
    labels_hw = preprocess.mask(_halves_mask(*size_hw))

    assert labels_hw.shape == preprocess.size_hw
    mean, std = np.array(preprocess.mean), np.array(preprocess.std)
    white_level, black_level = np.mean((1 - mean) / std), np.mean(-mean / std)
    level_hw = image_chw.mean(dim=0).numpy()
    # interpolation blurs the one column at the border; everywhere else the image is clearly
    # white or black, and the label must say which
    white_hw = level_hw > 0.9 * white_level
    black_hw = level_hw < 0.9 * black_level
    assert (white_hw | black_hw).mean() > 0.8
    assert white_hw.any() and black_hw.any()
    assert (labels_hw[white_hw] == 3).all()
    assert (labels_hw[black_hw] == 9).all()


def test_mask_of_a_wide_image_marks_the_left_columns_after_center_crop() -> None:
    # 20x40 -> shortest side 18 gives 18x36 -> center crop 16x16 keeps columns 10..25 of 36,
    # whose left half (columns 10..17) came from the left half of the original
    labels_hw = Preprocess(size_hw=(16, 16), resize=18).mask(_halves_mask(20, 40))

    assert (labels_hw[:, :8] == 3).all()
    assert (labels_hw[:, 8:] == 9).all()


def test_padding_from_a_crop_larger_than_the_resize_gets_label_zero() -> None:
    preprocess = Preprocess(size_hw=(12, 12), resize=8)

    labels_hw = preprocess.mask(np.full((8, 8), 5))

    assert labels_hw[0, 0] == 0 and labels_hw[6, 6] == 5
    assert preprocess.image(Image.new("RGB", (8, 8), (255, 255, 255))).shape == (3, 12, 12)


def test_mask_must_be_two_dimensional() -> None:
    with pytest.raises(DataError, match=r"\(h, w\)"):
        SHORTEST.mask(np.zeros((4, 4, 3)))


@pytest.mark.parametrize("preprocess", [SHORTEST, SQUASH])
def test_dict_round_trip_survives_json(preprocess: Preprocess) -> None:
    restored = Preprocess.from_dict(json.loads(json.dumps(preprocess.to_dict())))

    assert restored == preprocess
