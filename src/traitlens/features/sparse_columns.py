"""Latent activations as sparse columns (CSC), so one latent's nonzeros are one contiguous slice.

Built in two steps that scale past memory. The encoding pass writes the nonzeros of each chunk of
consecutive tokens as one file, in row-major order. Assembly counts the nonzeros of every latent
over the chunks, preallocates the column files as memory maps, and scatters each chunk into place
at its latents' running offsets: chunks go in token order and the scatter is stable, so the rows
of a latent stay ascending.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from traitlens.features.files import CHUNKS, COLUMNS_RECORD, INDPTR, ROWS, VALUES, FeaturesError
from traitlens.store.atomic import (
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    commit,
    temp_path,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def write_chunk(path: Path, rows_n: IntArray, cols_n: IntArray, values_n: FloatArray, n_nonfinite: int) -> None:
    """Atomically save one chunk's nonzeros: global token rows, latent columns, values, and how
    many of its tokens were skipped as NaN/Inf."""
    buffer = io.BytesIO()
    np.savez(buffer, rows=rows_n.astype(np.int64), cols=cols_n.astype(np.int64), values=values_n.astype(np.float32),
             n_nonfinite=np.int64(n_nonfinite))

    def write(handle: IO[bytes]) -> None:
        handle.write(buffer.getvalue())

    atomic_write(path, write)


def read_chunk(path: Path) -> tuple[IntArray, IntArray, FloatArray, int]:
    """(rows (n,), cols (n,), values (n,), n_nonfinite) of a chunk written by :func:`write_chunk`."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["rows"], arrays["cols"], arrays["values"], int(arrays["n_nonfinite"])
    except (OSError, ValueError, KeyError) as error:
        raise FeaturesError(f"damaged chunk {path} ({error}); delete it and run again") from error


def columns_complete(root: Path) -> bool:
    """Whether the column files are all in place (their record is written after them)."""
    return (root / COLUMNS_RECORD).is_file()


def assemble_columns(chunk_paths: Sequence[Path], width: int, root: Path) -> dict[str, int]:
    """Scatter the chunks into ``latent_indptr.npy`` (width + 1,) int64, ``latent_rows.npy``
    (nnz,) int64 and ``latent_values.npy`` (nnz,) float32, then write the columns record and
    delete the chunks. Returns the record: ``nnz`` and ``n_nonfinite`` (tokens skipped)."""
    counts_w = np.zeros(width, dtype=np.int64)
    n_nonfinite = 0
    for path in chunk_paths:
        _, cols_n, _, skipped = read_chunk(path)
        counts_w += np.bincount(cols_n, minlength=width)
        n_nonfinite += skipped
    indptr_w1 = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts_w)])
    nnz = int(indptr_w1[-1])
    rows_temp, values_temp = temp_path(root / ROWS), temp_path(root / VALUES)
    rows_out = np.lib.format.open_memmap(rows_temp, mode="w+", dtype=np.int64, shape=(nnz,))
    values_out = np.lib.format.open_memmap(values_temp, mode="w+", dtype=np.float32, shape=(nnz,))
    cursor_w = indptr_w1[:-1].copy()
    for path in chunk_paths:
        rows_n, cols_n, values_n, _ = read_chunk(path)
        order_n = np.argsort(cols_n, kind="stable")
        chunk_counts_w = np.bincount(cols_n, minlength=width)
        sorted_cols_n = cols_n[order_n]
        run_start_w = np.cumsum(chunk_counts_w) - chunk_counts_w
        destination_n = cursor_w[sorted_cols_n] + np.arange(len(order_n)) - run_start_w[sorted_cols_n]
        rows_out[destination_n] = rows_n[order_n]
        values_out[destination_n] = values_n[order_n]
        cursor_w += chunk_counts_w
    for array in (rows_out, values_out):
        array.flush()
    del rows_out, values_out
    commit(rows_temp, root / ROWS)
    commit(values_temp, root / VALUES)
    atomic_save_npy(root / INDPTR, indptr_w1)
    record = {"nnz": nnz, "n_nonfinite": n_nonfinite}
    atomic_write_json(root / COLUMNS_RECORD, record)
    shutil.rmtree(root / CHUNKS, ignore_errors=True)
    return record


class SparseColumns:
    """The column files of a features directory, memory-mapped (a latent is read when asked for)."""

    def __init__(self, root: Path) -> None:
        try:
            self.indptr_w1: IntArray = np.load(root / INDPTR)
            self.rows_n: IntArray = np.load(root / ROWS, mmap_mode="r")
            self.values_n: FloatArray = np.load(root / VALUES, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise FeaturesError(f"damaged latent columns in {root} ({error})") from error
        if len(self.rows_n) != self.indptr_w1[-1] or len(self.values_n) != len(self.rows_n):
            raise FeaturesError(f"latent columns in {root} disagree: {self.indptr_w1[-1]} nonzeros in {INDPTR}, "
                                f"{len(self.rows_n)} rows and {len(self.values_n)} values")

    @property
    def width(self) -> int:
        return len(self.indptr_w1) - 1

    @property
    def counts_w(self) -> IntArray:
        """Nonzeros of every latent (width,)."""
        return np.diff(self.indptr_w1)

    def column(self, latent: int) -> tuple[IntArray, FloatArray]:
        """(token rows ascending (n,), activations (n,)) where ``latent`` is nonzero."""
        if not 0 <= latent < self.width:
            raise FeaturesError(f"latent {latent} out of range 0..{self.width - 1}")
        start, stop = self.indptr_w1[latent], self.indptr_w1[latent + 1]
        return np.asarray(self.rows_n[start:stop]), np.asarray(self.values_n[start:stop])

    def block(self, start: int, stop: int) -> tuple[IntArray, IntArray, FloatArray]:
        """The nonzeros of latents ``start..stop-1`` as one read: (latent minus ``start`` (n,),
        token rows (n,), activations (n,)), ordered by latent then row."""
        first, last = self.indptr_w1[start], self.indptr_w1[stop]
        local_n = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(self.indptr_w1[start : stop + 1]))
        return local_n, np.asarray(self.rows_n[first:last]), np.asarray(self.values_n[first:last])
