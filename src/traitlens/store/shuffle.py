"""Shuffled, endless, resumable batches over any number of shards with bounded memory.

The rows of all shards are cut into blocks of ``block_rows`` contiguous rows. Each epoch permutes
the blocks; consecutive groups of ``window_blocks`` blocks form a window whose rows are permuted
together. The stream of rows is these windows, epoch after epoch; batch ``n`` is rows
``[n*B, (n+1)*B)`` of that stream. Everything is a function of the seed, so training can resume at
any batch without replaying the ones before it.

Only row *indices* are shuffled: each batch is gathered straight from the memory-mapped shards
(sorted by position, so reads stay nearly sequential), never through a copied window. Memory is
the index arrays of one window plus one batch. Rows are gathered as whole machine words (each
row viewed as int64s): torch's multi-threaded row copy is then about twice as fast as numpy's
``take`` and ~40x faster than ``index_select`` on float16 rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from traitlens.errors import StoreError


@dataclass(frozen=True)
class ShuffleConfig:
    batch_size: int
    seed: int = 0
    block_rows: int = 256
    window_blocks: int = 256  # rows of one window are mixed; larger mixes more widely

    def __post_init__(self) -> None:
        if min(self.batch_size, self.block_rows, self.window_blocks) < 1:
            raise StoreError(f"batch size, block rows and window blocks must be at least 1, got {self.batch_size}, "
                             f"{self.block_rows} and {self.window_blocks}")


class ShuffledBatches:
    """Endless shuffled float32 batches (batch, width) from row-major shards of one layer."""

    def __init__(self, shards: Sequence[np.ndarray], config: ShuffleConfig) -> None:
        if not shards or not sum(len(shard) for shard in shards):
            raise StoreError("no rows to read")
        self.config = config
        self._row_words = [_as_row_words(shard) for shard in shards]
        self._storage_dtype = torch.from_numpy(np.empty(0, dtype=shards[0].dtype)).dtype
        # Reused for every batch (the float32 batch handed out is a fresh copy): fresh buffers of
        # this size cost page faults that are slower than the gather itself.
        self._gather_buffer = torch.empty((config.batch_size, self._row_words[0].shape[1]), dtype=self._row_words[0].dtype)
        sizes = np.array([len(shard) for shard in shards], dtype=np.int64)
        self.n_rows = int(sizes.sum())
        # Rows are numbered globally (shard after shard); a block is a run of global rows.
        self._shard_starts = np.concatenate(([0], np.cumsum(sizes)))
        block_starts = [start for shard_start, size in zip(self._shard_starts, sizes, strict=False)
                        for start in range(int(shard_start), int(shard_start + size), config.block_rows)]
        self._block_starts = np.array(block_starts, dtype=np.int64)
        ends = np.minimum(self._block_starts + config.block_rows, np.repeat(self._shard_starts[1:], [
            len(range(0, int(size), config.block_rows)) for size in sizes]))
        self._block_sizes = ends - self._block_starts

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

    def batches(self, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Batches ``start_batch``, ``start_batch + 1``, ... forever."""
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
