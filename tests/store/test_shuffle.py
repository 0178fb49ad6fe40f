from __future__ import annotations

import itertools

import numpy as np
import pytest

from traitlens.errors import StoreError
from traitlens.store import ShuffleConfig, ShuffledBatches


def _shards() -> list[np.ndarray]:
    # row r holds the value r in every column, so a batch tells exactly which rows it came from
    sizes = (37, 0, 100, 5, 61)
    starts = np.cumsum((0, *sizes))
    return [np.repeat(np.arange(s, s + n, dtype=np.float16)[:, None], 3, axis=1) for s, n in zip(starts, sizes, strict=False)]


def _rows(batches: list) -> list[int]:
    return [int(v) for batch in batches for v in batch[:, 0].tolist()]


def test_each_epoch_visits_every_row_once() -> None:
    reader = ShuffledBatches(_shards(), ShuffleConfig(batch_size=7, block_rows=8, window_blocks=3, seed=1))
    assert reader.n_rows == 203
    rows = _rows(list(itertools.islice(reader.batches(), 58)))  # 406 rows = two epochs
    assert sorted(rows[:203]) == list(range(203)) and sorted(rows[203:]) == list(range(203))
    assert rows[:203] != list(range(203)) and rows[:203] != rows[203:]


def test_mixing_reaches_across_shards_within_a_batch() -> None:
    reader = ShuffledBatches(_shards(), ShuffleConfig(batch_size=32, block_rows=8, window_blocks=8))
    first = _rows(list(itertools.islice(reader.batches(), 1)))
    assert len({row // 8 for row in first}) >= 4  # rows from at least four different blocks


def test_resuming_at_a_batch_equals_continuing() -> None:
    config = ShuffleConfig(batch_size=10, block_rows=8, window_blocks=3, seed=5)
    straight = list(itertools.islice(ShuffledBatches(_shards(), config).batches(), 50))
    for start in (0, 1, 19, 20, 21, 47):
        resumed = list(itertools.islice(ShuffledBatches(_shards(), config).batches(start_batch=start), 50 - start))
        assert _rows(resumed) == _rows(straight[start:])


def test_seed_decides_the_order_and_batches_are_float32() -> None:
    batches = {seed: next(ShuffledBatches(_shards(), ShuffleConfig(batch_size=16, seed=seed)).batches()) for seed in (0, 0, 1)}
    again = next(ShuffledBatches(_shards(), ShuffleConfig(batch_size=16, seed=0)).batches())
    assert batches[0].dtype.is_floating_point and str(batches[0].dtype) == "torch.float32"
    assert _rows([batches[0]]) == _rows([again]) != _rows([batches[1]])


@pytest.mark.parametrize("shards", [[np.zeros((0, 3))], []])
def test_an_empty_store_is_refused(shards: list[np.ndarray]) -> None:
    with pytest.raises(StoreError, match="no rows"):
        ShuffledBatches(shards, ShuffleConfig(batch_size=4))


@pytest.mark.parametrize("field", ["batch_size", "block_rows", "window_blocks"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_bad_config_is_refused(field: str, value: int) -> None:
    with pytest.raises(StoreError, match="at least 1"):
        ShuffleConfig(**{"batch_size": 4, field: value})
