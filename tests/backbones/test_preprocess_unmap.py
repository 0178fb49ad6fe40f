"""``Preprocess.unmap``: maps over the model input back onto the original image, the inverse of
the resize and crop that :meth:`Preprocess.image` and :meth:`Preprocess.mask` apply."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from traitlens.backbones import Preprocess

SHORTEST = Preprocess(size_hw=(16, 16), resize=18)
PADDING = Preprocess(size_hw=(16, 16), resize=12)
SQUASH = Preprocess(size_hw=(16, 24), resize=16, resize_mode="squash")
PAD = Preprocess(size_hw=(16, 24), resize=16, resize_mode="pad")


def _source_pixels(preprocess: Preprocess, image_hw: tuple[int, int]) -> np.ndarray:
    """For each input pixel (h, w), the flat index + 1 of the image pixel torchvision's geometry
    takes it from (nearest neighbour), 0 where the crop padded."""
    index_hw = np.arange(1, image_hw[0] * image_hw[1] + 1).reshape(image_hw)
    return preprocess.mask(index_hw)


@pytest.mark.parametrize(
    ("preprocess", "image_hw"),
    [*itertools.product([SHORTEST, PADDING, SQUASH, PAD], [(100, 50), (40, 90), (16, 16), (33, 33)]),
     (PAD, (10, 15))],  # a letterbox also enlarges small images
)
def test_unmap_inverts_the_geometry_of_mask(preprocess: Preprocess, image_hw: tuple[int, int]) -> None:
    crop_h, crop_w = preprocess.size_hw
    # A map whose value is the input row (then column) coordinate, read back at image resolution.
    rows_hw = torch.arange(crop_h, dtype=torch.float32)[:, None].expand(crop_h, crop_w) + 1
    cols_hw = torch.arange(crop_w, dtype=torch.float32)[None, :].expand(crop_h, crop_w) + 1
    back_rows, back_cols = preprocess.unmap(rows_hw, image_hw), preprocess.unmap(cols_hw, image_hw)
    assert back_rows.shape == image_hw and back_rows.dtype == torch.float32

    source = _source_pixels(preprocess, image_hw)
    for (row, col), flat in np.ndenumerate(source):
        if flat == 0:
            continue
        y, x = divmod(int(flat) - 1, image_hw[1])
        # The image pixel an input pixel came from maps back to (about) that input pixel.
        assert abs(float(back_rows[y, x]) - (row + 1)) <= 1.0
        assert abs(float(back_cols[y, x]) - (col + 1)) <= 1.0


@pytest.mark.parametrize("image_hw", [(100, 50), (40, 90)])
def test_pixels_outside_the_crop_get_zero(image_hw: tuple[int, int]) -> None:
    ones_hw = torch.ones(SHORTEST.size_hw)

    back_hw = SHORTEST.unmap(ones_hw, image_hw)

    used = np.zeros(image_hw, dtype=bool)
    used.reshape(-1)[_source_pixels(SHORTEST, image_hw).reshape(-1) - 1] = True
    kept = back_hw > 0
    # Everything the crop kept maps back inside; the bands it cut away are exactly zero.
    assert bool(kept[torch.from_numpy(used)].all())
    assert bool(((back_hw == 0) | (back_hw - 1).abs().lt(1e-6)).all())
    long_axis = 0 if image_hw[0] > image_hw[1] else 1
    profile = kept.any(dim=1 - long_axis)
    assert not bool(profile[0]) and not bool(profile[-1]) and bool(profile[len(profile) // 2])


def test_squash_keeps_every_pixel_and_any_map_size() -> None:
    half_hw = torch.rand(8, 12)

    back_hw = SQUASH.unmap(half_hw, (30, 50))

    assert back_hw.shape == (30, 50)
    assert bool((back_hw > 0).all())
    assert float(back_hw.min()) >= float(half_hw.min()) and float(back_hw.max()) <= float(half_hw.max())


@pytest.mark.parametrize("image_hw", [(100, 50), (40, 90), (16, 24), (7, 3)])
def test_pad_keeps_every_pixel_and_letterboxes_evenly(image_hw: tuple[int, int]) -> None:
    source = _source_pixels(PAD, image_hw)

    # every image pixel reaches the input (no crop), and only the letterbox bars are padding
    assert set(np.unique(source[source > 0])) <= set(range(1, image_hw[0] * image_hw[1] + 1))
    assert torch.allclose(PAD.unmap(torch.ones(PAD.size_hw), image_hw), torch.ones(image_hw))
    bars_h, bars_w = (source == 0).all(axis=1), (source == 0).all(axis=0)
    assert (source == 0).sum() == bars_h.sum() * source.shape[1] + bars_w.sum() * source.shape[0] - bars_h.sum() * bars_w.sum()
    for bars in (bars_h, bars_w):  # the bars sit at both ends, differing by at most one pixel
        first, last = int(np.argmin(bars)), int(np.argmin(bars[::-1]))
        assert abs(first - last) <= 1 and not bars[first:len(bars) - last].any()


def test_pad_fills_the_bars_with_the_mean_colour_and_label_zero() -> None:
    from PIL import Image

    image = Image.new("RGB", (40, 10), (255, 255, 255))  # wide: bars above and below

    pixels_chw = PAD.image(image)
    labels_hw = PAD.mask(np.full((10, 40), 7))

    assert pixels_chw.shape == (3, 16, 24)
    assert bool((pixels_chw[:, :5] == 0).all()) and bool((pixels_chw[:, -5:] == 0).all())
    assert bool((pixels_chw[:, 5:11] > 0).all())
    assert (labels_hw[:5] == 0).all() and (labels_hw[-5:] == 0).all() and (labels_hw[5:11] == 7).all()


def test_fitted_switches_only_the_geometry() -> None:
    assert SHORTEST.fitted("squash") == Preprocess(size_hw=(16, 16), resize=18, resize_mode="squash")
    assert SHORTEST.fitted("pad").resize_mode == "pad" and SQUASH.fitted("crop").resize_mode == "shortest"
    assert SHORTEST.fitted("crop") == SHORTEST


def test_several_maps_unmap_at_once_as_each_alone() -> None:
    maps_chw = torch.rand(3, 16, 16)
    together = SHORTEST.unmap(maps_chw, (20, 30))
    assert together.shape == (3, 20, 30)
    assert torch.equal(together, torch.stack([SHORTEST.unmap(map_hw, (20, 30)) for map_hw in maps_chw]))
