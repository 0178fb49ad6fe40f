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
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from traitlens.atomic import (
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    commit,
    temp_path,
)
from traitlens.features.files import CHUNKS, COLUMNS_RECORD, INDPTR, ROWS, VALUES, FeaturesError
from traitlens.json_config import parse_standard_json

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# what np.load raises for a truncated, foreign or garbage file (a pickle is refused with ValueError)
_LOAD_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def write_chunk(path: Path, rows_n: IntArray, cols_n: IntArray, values_n: FloatArray, n_nonfinite: int) -> None:
    """Atomically save one chunk's nonzeros: global token rows, latent columns, values, and how
    many of its tokens were skipped as NaN/Inf."""
    buffer = io.BytesIO()
    np.savez(buffer, rows=rows_n.astype(np.int64), cols=cols_n.astype(np.int64), values=values_n.astype(np.float32),
             n_nonfinite=np.int64(n_nonfinite))

    def write(handle: IO[bytes]) -> None:
        handle.write(buffer.getvalue())

    atomic_write(path, write)


def _damaged(path: Path, why: object) -> FeaturesError:
    text = str(why).splitlines()[0][:200] if str(why) else type(why).__name__
    return FeaturesError(f"damaged features file {path} ({text}); run again with --overwrite")


def _vector(array: object, dtype: type[np.generic], path: Path, what: str, length: int | None = None) -> np.ndarray:
    """``array`` checked to be a 1-d ``dtype`` array (of ``length``), else a one-line error."""
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype) or array.ndim != 1 or (
            length is not None and len(array) != length):
        found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise _damaged(path, f"{what}: expected a 1-d {np.dtype(dtype)} array{'' if length is None else f' of {length}'}, found {found}")
    return array


def read_chunk(path: Path, width: int) -> tuple[IntArray, IntArray, FloatArray, int]:
    """(rows (n,), cols (n,), values (n,), n_nonfinite) of a chunk written by :func:`write_chunk`,
    checked (latents below ``width``); never unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded as arrays:
            rows_n, cols_n, values_n, skipped = arrays["rows"], arrays["cols"], arrays["values"], arrays["n_nonfinite"]
    except (*_LOAD_ERRORS, KeyError) as error:
        raise _damaged(path, error) from error
    _vector(rows_n, np.int64, path, "rows")
    _vector(cols_n, np.int64, path, "cols", len(rows_n))
    _vector(values_n, np.float32, path, "values", len(rows_n))
    if skipped.shape != () or skipped.dtype != np.int64 or skipped < 0:
        raise _damaged(path, f"n_nonfinite: expected a count, found {skipped.dtype} {skipped.shape}")
    if len(cols_n) and not 0 <= cols_n.min() <= cols_n.max() < width:
        raise _damaged(path, f"cols: latents outside 0..{width - 1}")
    return rows_n, cols_n, values_n, int(skipped)


def read_columns_record(root: Path) -> dict[str, int]:
    """The columns record (``nnz``, ``n_nonfinite``), checked."""
    path = root / COLUMNS_RECORD
    try:
        record = parse_standard_json(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        raise _damaged(path, error) from error
    if not isinstance(record, dict) or not all(type(record.get(key)) is int and record[key] >= 0 for key in ("nnz", "n_nonfinite")):
        raise _damaged(path, "expected counts nnz and n_nonfinite")
    return {"nnz": record["nnz"], "n_nonfinite": record["n_nonfinite"]}


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
        _, cols_n, _, skipped = read_chunk(path, width)
        counts_w += np.bincount(cols_n, minlength=width)
        n_nonfinite += skipped
    indptr_w1 = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts_w)])
    nnz = int(indptr_w1[-1])
    rows_temp, values_temp = temp_path(root / ROWS), temp_path(root / VALUES)
    rows_out = np.lib.format.open_memmap(rows_temp, mode="w+", dtype=np.int64, shape=(nnz,))
    values_out = np.lib.format.open_memmap(values_temp, mode="w+", dtype=np.float32, shape=(nnz,))
    cursor_w = indptr_w1[:-1].copy()
    for path in chunk_paths:
        rows_n, cols_n, values_n, _ = read_chunk(path, width)
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


def _load_vector(path: Path, dtype: type[np.generic]) -> np.ndarray:
    """A 1-d ``dtype`` array saved with ``np.save``, memory-mapped (so a header claiming more data
    than the file holds fails instead of allocating it); never unpickled."""
    if not path.is_file():
        raise FeaturesError(f"{path} is missing; the features folder is incomplete (run the analysis again)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _LOAD_ERRORS as error:
        raise _damaged(path, error) from error
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
    return _vector(array, dtype, path, path.name)


class SparseColumns:
    """The column files of a features directory, memory-mapped (a latent is read when asked for),
    checked when opened (dtypes, shapes, a monotone ``indptr``) and as they are read (each
    latent's rows ascending and below ``n_tokens``, when given)."""

    def __init__(self, root: Path, n_tokens: int | None = None, files: tuple[Path, Path, Path] | None = None) -> None:
        """The columns in ``root``; ``files`` are the (indptr, rows, values) files when a manifest
        names them (checked to lie inside ``root`` by its reader)."""
        indptr_path, self.rows_path, self.values_path = files or (root / INDPTR, root / ROWS, root / VALUES)
        self.root, self.n_tokens = root, n_tokens
        self.indptr_w1: IntArray = np.array(_load_vector(indptr_path, np.int64))
        self.rows_n: IntArray = _load_vector(self.rows_path, np.int64)
        self.values_n: FloatArray = _load_vector(self.values_path, np.float32)
        indptr_w1 = self.indptr_w1
        if len(indptr_w1) < 2 or indptr_w1[0] != 0 or (np.diff(indptr_w1) < 0).any():
            raise _damaged(indptr_path, "expected offsets from 0, never decreasing, for at least one latent")
        if len(self.rows_n) != indptr_w1[-1] or len(self.values_n) != len(self.rows_n):
            raise FeaturesError(f"latent columns in {root} disagree: {indptr_w1[-1]} nonzeros in {indptr_path.name}, "
                                f"{len(self.rows_n)} rows and {len(self.values_n)} values; run again with --overwrite")

    @property
    def width(self) -> int:
        return len(self.indptr_w1) - 1

    @property
    def counts_w(self) -> IntArray:
        """Nonzeros of every latent (width,)."""
        return np.diff(self.indptr_w1)

    def _check(self, local_n: IntArray, rows_n: IntArray, values_n: FloatArray) -> None:
        """A one-line error unless each latent's rows ascend and lie in the store and every value is finite."""
        ascending = ((np.diff(rows_n) > 0) | (np.diff(local_n) > 0)).all()
        inside = not len(rows_n) or (rows_n.min() >= 0 and (self.n_tokens is None or rows_n.max() < self.n_tokens))
        if not (ascending and inside):
            raise _damaged(self.rows_path, "token rows out of order or outside the store")
        if not np.isfinite(values_n).all():
            raise _damaged(self.values_path, "activations that are not finite")

    def column(self, latent: int) -> tuple[IntArray, FloatArray]:
        """(token rows ascending (n,), activations (n,)) where ``latent`` is nonzero."""
        if not 0 <= latent < self.width:
            raise FeaturesError(f"latent {latent} out of range 0..{self.width - 1}")
        _, rows_n, values_n = self.block(latent, latent + 1)
        return rows_n, values_n

    def block(self, start: int, stop: int) -> tuple[IntArray, IntArray, FloatArray]:
        """The nonzeros of latents ``start..stop-1`` as one read: (latent minus ``start`` (n,),
        token rows (n,), activations (n,)), ordered by latent then row."""
        first, last = self.indptr_w1[start], self.indptr_w1[stop]
        local_n = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(self.indptr_w1[start : stop + 1]))
        rows_n, values_n = np.asarray(self.rows_n[first:last]), np.asarray(self.values_n[first:last])
        self._check(local_n, rows_n, values_n)
        return local_n, rows_n, values_n
