"""Finding and decoding image files; every decoding failure becomes an UnreadableImageError."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from traitlens.errors import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class UnreadableImageError(DataError):
    """An image or mask file exists in the source but cannot be decoded."""


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names a visible file with an image extension (any letter case)."""
    return (
        not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def find_images(directory: Path, recursive: bool) -> list[Path]:
    """Visible image files in ``directory`` (and below it when ``recursive``), sorted by path.

    Hidden directories are pruned while walking so that e.g. ``.git`` or ``.cache`` is never read.
    """
    if not recursive:
        return sorted(path for path in directory.iterdir() if is_image_file(path))
    found: list[Path] = []
    for folder, subfolders, files in os.walk(directory):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found.extend(Path(folder, name) for name in files)
    return sorted(path for path in found if is_image_file(path))


def describe_extensions() -> str:
    """The image extensions as a phrase for error messages."""
    return ", ".join(IMAGE_EXTENSIONS) + " in any letter case"


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


def decode_image(file: Path | IO[bytes], source: str) -> Image.Image:
    """Open, fully decode (so truncated files fail here) and convert an image to RGB.

    ``source`` names the image in the error message.
    """
    try:
        with Image.open(file) as image:
            image.load()
            return image.convert("RGB")
    # PIL's decoders raise many exception types on malformed bytes (OSError, SyntaxError,
    # ValueError, struct.error, DecompressionBombError, ...); all of them mean "unreadable".
    except Exception as error:
        raise UnreadableImageError(f"cannot read image {source}: {_reason(error)}") from error


def decode_label_map(file: Path, source: str) -> np.ndarray:
    """Read a label-map image as an (h, w) int64 array of class indices.

    Single-channel modes ("L", "P", "I", "1", ...) give their stored values, so a palette PNG gives
    palette indices, not colours; a multi-channel image gives its first channel.
    """
    try:
        with Image.open(file) as image:
            image.load()
            values = np.array(image)
    except Exception as error:  # same reasoning as in decode_image
        raise UnreadableImageError(f"cannot read mask {source}: {_reason(error)}") from error
    if values.ndim == 3:
        values = values[..., 0]
    if not np.issubdtype(values.dtype, np.integer) and values.dtype != np.bool_:
        raise UnreadableImageError(
            f"cannot read mask {source}: expected integer class indices, found {values.dtype} pixels"
        )
    return values.astype(np.int64)
