"""Crash-safe writes: write to a temporary name, fsync, rename. A reader never sees half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

TEMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """Where a file is written before :func:`commit` moves it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + TEMP_SUFFIX)


def commit(temp: Path, path: Path) -> None:
    """fsync a finished temporary file and rename it to ``path`` durably."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place durably."""
    temp = temp_path(path)
    try:
        with open(temp, "wb") as handle:
            write(handle)
        commit(temp, path)
    except BaseException:
        # a failed write (disk full, read-only folder, a kill's KeyboardInterrupt) leaves no stray file
        temp.unlink(missing_ok=True)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def atomic_save_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def atomic_save_jpeg(path: Path, image: Image.Image, quality: int = 85) -> None:
    """A small picture for a page (thumbnails): RGB JPEG."""
    atomic_write(path, lambda handle: image.convert("RGB").save(handle, format="JPEG", quality=quality))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    atomic_write(path, write)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())


def remove_temp_files(root: Path) -> int:
    """Delete leftovers of writes that a kill interrupted; returns how many."""
    leftovers = list(root.rglob("*" + TEMP_SUFFIX))
    for leftover in leftovers:
        leftover.unlink()
    return len(leftovers)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    # safetensors writes to a file name, not a handle: it writes the temporary file atomic_write opened
    atomic_write(path, lambda handle: save_file(cpu, handle.name, metadata=metadata))
