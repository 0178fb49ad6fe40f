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


# macOS has no fdatasync; fsync also flushes the data (and the metadata besides)
_sync_data = getattr(os, "fdatasync", os.fsync)


class NpyStream:
    """A 2-D ``.npy`` file written block by block as its rows arrive, then moved into place like
    :func:`atomic_save_npy` — with the same bytes as ``np.save`` of the whole array, so that the
    writing (and its flush to disk) can overlap the work that makes the next block.

    The header is written first, for ``n_rows`` planned rows; :meth:`commit` refuses any other
    count, and :meth:`abandon` removes the temporary file. Each block is flushed to disk as it is
    written (``fdatasync``), so that the final fsync has little left to wait for."""

    def __init__(self, path: Path, n_rows: int, width: int, dtype: np.dtype[Any]) -> None:
        self.path, self.n_rows, self.width, self.dtype = path, n_rows, width, np.dtype(dtype)
        self.written = 0
        self._temp = temp_path(path)
        self._handle: IO[bytes] = open(self._temp, "wb")  # closed by commit or abandon
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n_rows, width)}
        try:
            np.lib.format.write_array_header_1_0(self._handle, header)  # what np.save writes for such a shape
        except BaseException:
            self.abandon()
            raise

    def append(self, rows_nd: np.ndarray) -> None:
        if rows_nd.dtype != self.dtype or rows_nd.ndim != 2 or rows_nd.shape[1] != self.width:
            raise ValueError(f"{self.path}: rows of {rows_nd.dtype} {rows_nd.shape} do not fit a ({self.n_rows}, {self.width}) "
                             f"{self.dtype} array")
        if self.written + len(rows_nd) > self.n_rows:
            raise ValueError(f"{self.path}: more than the {self.n_rows} planned rows")
        self._handle.write(np.ascontiguousarray(rows_nd).data.cast("B"))
        self._handle.flush()
        _sync_data(self._handle.fileno())
        self.written += len(rows_nd)

    def commit(self) -> None:
        if self.written != self.n_rows:
            raise ValueError(f"{self.path}: {self.written} rows written of the {self.n_rows} planned")
        self._handle.close()
        commit(self._temp, self.path)

    def abandon(self) -> None:
        self._handle.close()
        self._temp.unlink(missing_ok=True)


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
