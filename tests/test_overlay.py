"""The heatmap drawn over its image: cold pixels keep the image, hot ones take the ramp's colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.overlay import LABEL_OPACITY, MAX_OPACITY, colorize, label_colour, label_overlay, overlay


def test_cold_pixels_keep_the_image_and_hot_ones_turn_red() -> None:
    image = Image.new("RGB", (3, 2), (100, 150, 200))
    map_hw = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 1.0]])

    drawn = np.asarray(overlay(image, map_hw)).astype(float)

    assert drawn.shape == (2, 3, 3)
    assert (drawn[map_hw.numpy() == 0] == [100, 150, 200]).all()
    hot = (1 - MAX_OPACITY) * np.array([100, 150, 200]) + MAX_OPACITY * np.array([224, 0, 0])
    assert np.allclose(drawn[0, 2], np.round(hot))
    assert drawn[0, 1, 1] > 150  # halfway: the ramp's cyan raises green


def test_colours_span_the_ramp_and_sizes_must_match() -> None:
    assert colorize(np.array([[0.0, 1.0]])).tolist() == [[[0, 0, 128], [224, 0, 0]]]
    with pytest.raises(ValueError, match="differ in size"):
        overlay(Image.new("RGB", (4, 4)), np.zeros((3, 4)))


def test_labels_are_painted_in_their_colours_and_the_background_is_left_alone() -> None:
    image = Image.new("RGB", (3, 1), (100, 100, 100))
    drawn = np.asarray(label_overlay(image, np.array([[0, 2, 17]]))).astype(float)
    assert drawn[0, 0].tolist() == [100, 100, 100]
    expected = (1 - LABEL_OPACITY) * 100 + LABEL_OPACITY * np.asarray(label_colour(2), dtype=float)
    assert np.allclose(drawn[0, 1], np.round(expected))
    assert label_colour(17) == label_colour(2)  # the palette repeats after 15 labels
    with pytest.raises(ValueError, match="differ in size"):
        label_overlay(image, np.zeros((2, 3)))
