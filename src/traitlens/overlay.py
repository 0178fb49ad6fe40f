"""A heatmap drawn over its image, for people to look at (the ``.npy`` beside it is the data)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# A jet-like ramp (dark blue, blue, cyan, yellow, red), so cold and hot read at a glance.
_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array([[0, 0, 128], [0, 64, 255], [0, 224, 255], [255, 224, 0], [224, 0, 0]], dtype=np.float64)
# Heat covers at most this share of a pixel, so the image stays visible under the hottest spots.
MAX_OPACITY = 0.6


def colorize(map_hw: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (h, w) -> colours (h, w, 3) float64 in [0, 255]."""
    flat = np.clip(map_hw, 0.0, 1.0).reshape(-1)
    channels = [np.interp(flat, _RAMP_STOPS, _RAMP_RGB[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).reshape(*map_hw.shape, 3)


def overlay(image: Image.Image, map_hw: torch.Tensor | np.ndarray) -> Image.Image:
    """The RGB image with the heatmap (its size, values in [0, 1]) blended in; a pixel's opacity
    grows with its heat, so cold regions show the image as it is."""
    heat_hw = np.asarray(map_hw.detach().cpu().numpy() if isinstance(map_hw, torch.Tensor) else map_hw, dtype=np.float64)
    rgb_hw3 = np.asarray(image.convert("RGB"), dtype=np.float64)
    if rgb_hw3.shape[:2] != heat_hw.shape:
        raise ValueError(f"heatmap {heat_hw.shape} and image {rgb_hw3.shape[:2]} differ in size")
    opacity_hw1 = MAX_OPACITY * np.clip(heat_hw, 0.0, 1.0)[..., None]
    blended = (1 - opacity_hw1) * rgb_hw3 + opacity_hw1 * colorize(heat_hw)
    return Image.fromarray(np.round(blended).astype(np.uint8))


# Categorical colours for label maps (label 0, the background, is left uncoloured).
_LABEL_RGB = np.array([[0, 0, 0], [140, 140, 140], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                       [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128],
                       [170, 110, 40], [128, 0, 0], [0, 0, 128], [128, 128, 0]], dtype=np.float64)
LABEL_OPACITY = 0.55


def label_colour(label: int) -> tuple[int, int, int]:
    """The colour label ``label`` is drawn in (the palette repeats after 15 labels)."""
    red, green, blue = (int(value) for value in _LABEL_RGB[0 if label == 0 else 1 + (label - 1) % (len(_LABEL_RGB) - 1)])
    return red, green, blue


def label_overlay(image: Image.Image, labels_hw: np.ndarray) -> Image.Image:
    """The RGB image with each non-zero label painted in its colour (:func:`label_colour`)."""
    rgb_hw3 = np.asarray(image.convert("RGB"), dtype=np.float64)
    labels = np.asarray(labels_hw, dtype=np.int64)
    if rgb_hw3.shape[:2] != labels.shape:
        raise ValueError(f"label map {labels.shape} and image {rgb_hw3.shape[:2]} differ in size")
    palette_index = np.where(labels == 0, 0, 1 + (labels - 1) % (len(_LABEL_RGB) - 1))
    opacity_hw1 = np.where(labels == 0, 0.0, LABEL_OPACITY)[..., None]
    blended = (1 - opacity_hw1) * rgb_hw3 + opacity_hw1 * _LABEL_RGB[palette_index]
    return Image.fromarray(np.round(blended).astype(np.uint8))
