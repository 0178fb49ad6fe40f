"""How a shard orders its token rows on disk, and reading them back in image order.

A store's shards hold their rows either image after image (``image``: row ``r`` of the layer is
token ``r % T`` of image ``r // T``) or permuted within each shard (``shuffled``), so that any run
of contiguous stored rows is a uniform sample of the shard's tokens and training can read its
shuffled batches as a few long contiguous slices (:mod:`traitlens.store.shuffle`).

The permutation is defined by integer arithmetic alone (see docs/formats.md), not by a random
number generator whose stream a NumPy release may change: a store must read back the same forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from traitlens.errors import StoreError

RowOrderName = Literal["image", "shuffled"]
ROW_ORDERS: tuple[RowOrderName, ...] = ("image", "shuffled")

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (a bijection of uint64); array arithmetic wraps silently."""
    values = values + _GOLDEN_GAMMA
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


@lru_cache(maxsize=8)
def shuffled_row_order(seed: int, shard: int, n_rows: int) -> np.ndarray:
    """(n_rows,) int64, read-only: stored row ``j`` of shard ``shard`` holds image-order row
    ``order[j]``. Rows are sorted by ``splitmix64(splitmix64(splitmix64(seed) ^ shard) ^ row)``,
    keys that are all distinct, so the order has no ties to break."""
    shard_key = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(shard))
    keys_n = _splitmix64(shard_key ^ np.arange(n_rows, dtype=np.uint64))
    order = np.argsort(keys_n, kind="stable").astype(np.int64)
    order.flags.writeable = False
    return order


@lru_cache(maxsize=8)
def stored_row_positions(seed: int, shard: int, n_rows: int) -> np.ndarray:
    """(n_rows,) int64, read-only: the stored row of each image-order row (the inverse of
    :func:`shuffled_row_order`)."""
    positions = np.empty(n_rows, dtype=np.int64)
    positions[shuffled_row_order(seed, shard, n_rows)] = np.arange(n_rows)
    positions.flags.writeable = False
    return positions


@dataclass(frozen=True)
class RowOrder:
    """The row order of a store's shards; ``seed`` is set exactly when rows are shuffled."""

    name: RowOrderName
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.name not in ROW_ORDERS or (self.seed is None) != (self.name == "image"):
            raise StoreError(f"a row order is image (no seed) or shuffled with a seed, got {self.name!r} with seed {self.seed}")
        if self.seed is not None and not 0 <= self.seed < 2**64:  # the permutation hashes it as a uint64
            raise StoreError(f"a row order seed is an integer in [0, 2^64), got {self.seed}")

    @property
    def shuffled(self) -> bool:
        return self.name == "shuffled"

    def to_dict(self) -> dict[str, str | int]:
        """The manifest fields: ``row_order``, and ``row_order_seed`` for shuffled rows."""
        return {"row_order": self.name} if self.seed is None else {"row_order": self.name, "row_order_seed": self.seed}

    def stored_order(self, shard: int, n_rows: int) -> np.ndarray | None:
        """The image-order row each stored row of ``shard`` holds; None when rows are stored by image."""
        return None if self.seed is None else shuffled_row_order(self.seed, shard, n_rows)

    def stored_positions(self, shard: int, n_rows: int) -> np.ndarray | None:
        """The stored row of each image-order row of ``shard``; None when rows are stored by image."""
        return None if self.seed is None else stored_row_positions(self.seed, shard, n_rows)


class ImageOrderedShard:
    """One stored shard read in image order (the tokens of its first image, then of the next...),
    whatever order its rows are stored in. Sliced like an array: ``shard[start:stop]``."""

    def __init__(self, stored_nd: np.ndarray, order: RowOrder, shard: int) -> None:
        self.stored_nd = stored_nd
        self.order = order
        self.shard = shard

    def __len__(self) -> int:
        return len(self.stored_nd)

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Image-order rows ``rows`` (a slice without step) as (n, width): a view of the memory map
        when rows are stored by image, else a copy gathered from the shuffled rows."""
        if rows.step not in (None, 1):
            raise ValueError("an image-ordered shard is read by contiguous slices")
        positions_n = self.order.stored_positions(self.shard, len(self.stored_nd))
        return self.stored_nd[rows] if positions_n is None else np.take(self.stored_nd, positions_n[rows], axis=0)
