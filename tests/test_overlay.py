"""The heatmap drawn over its image: cold pixels keep the image, hot ones take the ramp's colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.overlay import MAX_OPACITY, colorize, overlay


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
