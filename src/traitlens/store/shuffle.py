"""Shuffled, endless, resumable batches over any number of shards with bounded memory.

The rows of all shards are cut into blocks of ``block_rows`` contiguous rows. Each epoch permutes
the blocks; consecutive groups of ``window_blocks`` blocks are read (contiguous, so fast on disk and
page cache) and their rows permuted together. The stream of rows is these windows, epoch after
epoch; batch ``n`` is rows ``[n*B, (n+1)*B)`` of that stream. Everything is a function of the seed,
so training can resume at any batch without replaying the ones before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ShuffleConfig:
    batch_size: int
    seed: int = 0
    block_rows: int = 256
    window_blocks: int = 256  # memory bound: block_rows * window_blocks rows held at once

    def __post_init__(self) -> None:
        if min(self.batch_size, self.block_rows, self.window_blocks) < 1:
            raise ValueError("batch_size, block_rows and window_blocks must be positive")


@dataclass(frozen=True)
class _Block:
    shard: int
    start: int
    stop: int


class ShuffledBatches:
    """Endless shuffled float32 batches (batch, width) from row-major shards of one layer."""

    def __init__(self, shards: Sequence[np.ndarray], config: ShuffleConfig) -> None:
        self.shards = list(shards)
        self.config = config
        self.blocks = [
            _Block(index, start, min(start + config.block_rows, len(shard)))
            for index, shard in enumerate(self.shards)
            for start in range(0, len(shard), config.block_rows)
        ]
        self.n_rows = sum(len(shard) for shard in self.shards)
        if self.n_rows == 0:
            raise ValueError("no rows to read")

    def _window_blocks(self, epoch: int) -> list[list[_Block]]:
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.blocks))
        per = self.config.window_blocks
        return [[self.blocks[i] for i in order[start : start + per]] for start in range(0, len(order), per)]

    def _read_window(self, epoch: int, window: int, blocks: Sequence[_Block]) -> np.ndarray:
        rows_nd = np.concatenate([self.shards[b.shard][b.start : b.stop] for b in blocks])
        permutation = np.random.default_rng([self.config.seed, epoch, window, 1]).permutation(len(rows_nd))
        return rows_nd[permutation]

    def _windows_from(self, row: int) -> Iterator[np.ndarray]:
        """Windows of the stream starting at stream row ``row`` (the first one trimmed to it)."""
        epoch, offset = divmod(row, self.n_rows)
        while True:
            for window, blocks in enumerate(self._window_blocks(epoch)):
                size = sum(b.stop - b.start for b in blocks)
                if offset >= size:
                    offset -= size
                    continue
                rows_nd = self._read_window(epoch, window, blocks)
                yield rows_nd[offset:]
                offset = 0
            epoch += 1

    def batches(self, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Batches ``start_batch``, ``start_batch + 1``, ... forever."""
        size = self.config.batch_size
        pending: list[np.ndarray] = []
        n_pending = 0
        for rows_nd in self._windows_from(start_batch * size):
            pending.append(rows_nd)
            n_pending += len(rows_nd)
            if n_pending < size:
                continue
            joined_nd = np.concatenate(pending) if len(pending) > 1 else pending[0]
            n_full = len(joined_nd) // size
            for i in range(n_full):
                yield torch.from_numpy(joined_nd[i * size : (i + 1) * size]).float()
            rest = joined_nd[n_full * size :]
            pending, n_pending = [rest], len(rest)
