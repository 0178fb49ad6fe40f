"""Tiny on-disk images, label maps and truncated/corrupt files for the data tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size_wh: tuple[int, int] = (4, 3), value: int = 0) -> Path:
    """An RGB image of one colour; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size_wh, (value, 255 - value, 7)).save(path)
    return path


def write_label_map(path: Path, labels_hw: np.ndarray, mode: str = "L") -> Path:
    """A PNG label map storing ``labels_hw`` exactly, as an 8-bit grey or palette image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = labels_hw.shape
    image = Image.frombytes(mode, (width, height), labels_hw.astype(np.uint8).tobytes())
    if mode == "P":
        # A palette whose colours differ from the indices, so reading colours would be caught.
        image.putpalette([channel for index in range(256) for channel in (255 - index, index, 9)])
    image.save(path)
    return path


def write_random_bytes(path: Path, n_bytes: int = 300) -> Path:
    """A file with an image extension but no image in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_truncated_jpeg(path: Path, image: Image.Image) -> Path:
    """A JPEG cut off halfway, as an interrupted download leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(image)
    path.write_bytes(data[: len(data) // 2])
    return path


def first_pixel(image: Image.Image) -> tuple[int, int, int]:
    """The RGB value of the top-left pixel."""
    red, green, blue = np.asarray(image)[0, 0, :3]
    return int(red), int(green), int(blue)
