"""Shuffled, endless, resumable batches over any number of shards with bounded memory.

Batch ``n`` is rows ``[n*B, (n+1)*B)`` of an endless stream of rows, epoch after epoch, each epoch
every row once. Everything is a function of the seed, so training can resume at any batch without
replaying the ones before it. The stream is made in one of two modes:

- ``uniform``: the rows of all shards are cut into blocks of ``block_rows`` contiguous rows. Each
  epoch permutes the blocks; consecutive groups of ``window_blocks`` blocks form a window whose
  rows are permuted together. Only row *indices* are shuffled: each batch is gathered row by row
  straight from the memory-mapped shards (sorted by position, so reads stay nearly sequential),
  never through a copied window. Memory is the index arrays of one window plus one batch. Rows are
  gathered as whole machine words (each row viewed as int64s): torch's multi-threaded row copy is
  then about twice as fast as numpy's ``take`` and ~40x faster than ``index_select`` on float16
  rows, but still about a quarter of the speed of a sequential read.
- ``runs``: the rows are cut, shard by shard, into runs of ``ceil(B / runs_per_batch)`` contiguous
  rows; each epoch permutes the runs, and the stream is their rows in that order. A batch is then
  about ``runs_per_batch`` contiguous slices, each read with one float16 -> float32 copy, with no
  per-row gather. Its rows are well mixed only when the shards store their rows shuffled
  (``traitlens extract --row-order shuffled``, :mod:`traitlens.store.row_order`): a run is then a
  uniform sample of its shard's tokens, and a batch holds nearly as many distinct images as a
  uniform draw while a run is much shorter than a shard's image count (tests/store/test_shuffle.py
  measures it). On rows stored image after image a run is a few whole images.
- ``auto`` (the default): ``runs`` when the caller says the rows are stored shuffled, else ``uniform``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from traitlens.errors import StoreError

ShuffleMode = Literal["auto", "uniform", "runs"]
SHUFFLE_MODES: tuple[ShuffleMode, ...] = ("auto", "uniform", "runs")


@dataclass(frozen=True)
class ShuffleConfig:
    batch_size: int
    seed: int = 0
    block_rows: int = 256  # uniform mode
    window_blocks: int = 256  # uniform mode: rows of one window are mixed; larger mixes more widely
    mode: ShuffleMode = "auto"
    # runs mode: more runs mix more shards into a batch, fewer read faster (each run costs one copy
    # call, a few microseconds; benchmarks/extraction.py measures 8 runs per 4096 rows against a
    # sequential read, the goal being >= 0.8 of its speed)
    runs_per_batch: int = 8

    def __post_init__(self) -> None:
        if min(self.batch_size, self.block_rows, self.window_blocks, self.runs_per_batch) < 1:
            raise StoreError(f"batch size, block rows, window blocks and runs per batch must be at least 1, got "
                             f"{self.batch_size}, {self.block_rows}, {self.window_blocks} and {self.runs_per_batch}")
        if self.mode not in SHUFFLE_MODES:
            raise StoreError(f"the shuffle mode must be one of {', '.join(SHUFFLE_MODES)}, got {self.mode!r}")

    @property
    def run_rows(self) -> int:
        """Rows of one run (runs mode; a shard's last run may be shorter)."""
        return math.ceil(self.batch_size / self.runs_per_batch)


class ShuffledBatches:
    """Endless shuffled float32 batches (batch, width) from row-major shards of one layer;
    ``rows_preshuffled`` says the shards store their rows shuffled (it decides mode ``auto``)."""

    def __init__(self, shards: Sequence[np.ndarray], config: ShuffleConfig, rows_preshuffled: bool = False) -> None:
        if not shards or not sum(len(shard) for shard in shards):
            raise StoreError("no rows to read")
        self.config = config
        self.mode: ShuffleMode = ("runs" if rows_preshuffled else "uniform") if config.mode == "auto" else config.mode
        block_rows = config.run_rows if self.mode == "runs" else config.block_rows
        self._row_words = [_as_row_words(shard) for shard in shards]
        self._storage_dtype = torch.from_numpy(np.empty(0, dtype=shards[0].dtype)).dtype
        # Uniform mode: reused for every batch (the float32 batch handed out is a fresh copy): fresh
        # buffers of this size cost page faults that are slower than the gather itself.
        gather_rows = config.batch_size if self.mode == "uniform" else 0
        self._gather_buffer = torch.empty((gather_rows, self._row_words[0].shape[1]), dtype=self._row_words[0].dtype)
        sizes = np.array([len(shard) for shard in shards], dtype=np.int64)
        self.n_rows = int(sizes.sum())
        # Rows are numbered globally (shard after shard); a block is a run of global rows.
        self._shard_starts = np.concatenate(([0], np.cumsum(sizes)))
        block_starts = [start for shard_start, size in zip(self._shard_starts, sizes, strict=False)
                        for start in range(int(shard_start), int(shard_start + size), block_rows)]
        self._block_starts = np.array(block_starts, dtype=np.int64)
        blocks_per_shard = [len(range(0, int(size), block_rows)) for size in sizes]
        ends = np.minimum(self._block_starts + block_rows, np.repeat(self._shard_starts[1:], blocks_per_shard))
        self._block_sizes = ends - self._block_starts
        self._block_shards = np.repeat(np.arange(len(shards)), blocks_per_shard)
        # runs mode: each shard in its stored dtype, read a contiguous slice at a time
        self._stored_rows = [words.view(self._storage_dtype) for words in self._row_words]

    def _windows(self, epoch: int) -> list[np.ndarray]:
        """The block numbers of each window of ``epoch``."""
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self._block_starts))
        per = self.config.window_blocks
        return [order[start : start + per] for start in range(0, len(order), per)]

    def _window_rows(self, epoch: int, window: int, blocks: np.ndarray) -> np.ndarray:
        sizes = self._block_sizes[blocks]
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        rows = np.repeat(self._block_starts[blocks], sizes) + offsets
        return rows[np.random.default_rng([self.config.seed, epoch, window, 1]).permutation(len(rows))]

    def _rows_from(self, row: int) -> Iterator[np.ndarray]:
        """Global row numbers of the stream from stream row ``row`` on, a window at a time."""
        epoch, offset = divmod(row, self.n_rows)
        while True:
            for window, blocks in enumerate(self._windows(epoch)):
                size = int(self._block_sizes[blocks].sum())
                if offset >= size:
                    offset -= size
                    continue
                yield self._window_rows(epoch, window, blocks)[offset:]
                offset = 0
            epoch += 1

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.sort(rows)  # a batch is a set; sorted reads are nearly sequential
        shard_of_row = np.searchsorted(self._shard_starts, rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard_of_row)) + 1
        words_nw = self._gather_buffer[: len(rows)]
        for start, stop in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(rows)])), strict=True):
            shard = int(shard_of_row[start])
            local_rows = torch.from_numpy(rows[start:stop] - self._shard_starts[shard])
            torch.index_select(self._row_words[shard], 0, local_rows, out=words_nw[start:stop])
        batch_nd = words_nw.view(self._storage_dtype)
        # copy_ converts float16 in a vectorized kernel; .float() took ~40x longer here
        return torch.empty(batch_nd.shape, dtype=torch.float32).copy_(batch_nd)

    def _runs_from(self, row: int) -> Iterator[tuple[int, int, int]]:
        """(shard, first row in the shard, rows) of each run of the stream from stream row ``row`` on."""
        epoch, offset = divmod(row, self.n_rows)
        while True:
            blocks = np.random.default_rng([self.config.seed, epoch]).permutation(len(self._block_starts))
            ends = np.cumsum(self._block_sizes[blocks])
            first = int(np.searchsorted(ends, offset, side="right"))
            blocks = blocks[first:]
            shards = self._block_shards[blocks]
            starts = self._block_starts[blocks] - self._shard_starts[shards]
            sizes = self._block_sizes[blocks]
            skip = offset - (int(ends[first - 1]) if first else 0)
            starts[0] += skip
            sizes[0] -= skip
            # plain ints: numpy scalars would cost more than the copy of a run
            yield from zip(shards.tolist(), starts.tolist(), sizes.tolist(), strict=True)
            epoch, offset = epoch + 1, 0

    def _run_batches(self, start_batch: int) -> Iterator[torch.Tensor]:
        size = self.config.batch_size
        runs = self._runs_from(start_batch * size)
        shard, start, rows = next(runs)
        while True:
            batch_nd = torch.empty((size, self._stored_rows[0].shape[1]), dtype=torch.float32)
            filled = 0
            while filled < size:
                if not rows:
                    shard, start, rows = next(runs)
                take = min(rows, size - filled)
                # one vectorized float16 -> float32 copy per run (a run cut by the batch's end
                # continues the next batch); slice assignment costs less than narrow + copy_
                batch_nd[filled : filled + take] = self._stored_rows[shard][start : start + take]
                filled, start, rows = filled + take, start + take, rows - take
            yield batch_nd

    def batches(self, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Batches ``start_batch``, ``start_batch + 1``, ... forever."""
        if self.mode == "runs":
            yield from self._run_batches(start_batch)
            return
        size = self.config.batch_size
        pending = np.empty(0, dtype=np.int64)
        for rows in self._rows_from(start_batch * size):
            pending = np.concatenate((pending, rows))
            n_full = len(pending) // size
            for i in range(n_full):
                yield self._gather(pending[i * size : (i + 1) * size])
            pending = pending[n_full * size :]


def _as_row_words(shard: np.ndarray) -> torch.Tensor:
    """The shard's rows as the widest integer words that tile them, shared with the memory map
    (read-only: nothing ever writes through this view)."""
    row_bytes = shard.shape[1] * shard.dtype.itemsize
    word = next(np.dtype(w) for w in (np.int64, np.int32, np.int16, np.uint8) if row_bytes % np.dtype(w).itemsize == 0)
    words = np.ascontiguousarray(shard).view(word)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(words)
