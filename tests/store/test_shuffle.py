from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch

from traitlens.errors import StoreError
from traitlens.store import ShuffleConfig, ShuffledBatches
from traitlens.store.row_order import shuffled_row_order


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


@pytest.mark.parametrize("field", ["batch_size", "block_rows", "window_blocks", "runs_per_batch"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_bad_config_is_refused(field: str, value: int) -> None:
    with pytest.raises(StoreError, match="at least 1"):
        ShuffleConfig(**{"batch_size": 4, field: value})
    with pytest.raises(StoreError, match="shuffle mode must be one of auto, uniform, runs"):
        ShuffleConfig(batch_size=4, mode="blocks")  # type: ignore[arg-type]


def test_uniform_mode_is_the_stream_it_always_was() -> None:
    # pinned before the runs mode existed: mode "uniform" (and "auto" on rows stored by image)
    # must keep every batch bit for bit
    config = ShuffleConfig(batch_size=10, block_rows=8, window_blocks=3, seed=5)
    for mode in ("uniform", "auto"):
        reader = ShuffledBatches(_shards(), ShuffleConfig(**{**config.__dict__, "mode": mode}))
        rows = _rows(list(itertools.islice(reader.batches(), 50)))
        assert reader.mode == "uniform" and rows[:12] == [56, 59, 127, 128, 129, 131, 132, 150, 153, 157, 53, 54]
        assert hashlib.sha256(str(rows).encode()).hexdigest()[:16] == "fa29225fc97505a0"


def test_auto_mode_reads_runs_from_preshuffled_rows_only() -> None:
    config = ShuffleConfig(batch_size=8)
    assert ShuffledBatches(_shards(), config, rows_preshuffled=True).mode == "runs"
    assert ShuffledBatches(_shards(), config, rows_preshuffled=False).mode == "uniform"
    assert ShuffledBatches(_shards(), ShuffleConfig(batch_size=8, mode="uniform"), rows_preshuffled=True).mode == "uniform"


def test_runs_mode_reads_every_row_once_per_epoch_in_contiguous_runs() -> None:
    config = ShuffleConfig(batch_size=12, runs_per_batch=3, seed=2, mode="runs")  # runs of 4 rows
    reader = ShuffledBatches(_shards(), config)
    batches = list(itertools.islice(reader.batches(), 34))  # 408 rows: two epochs of 203, and two rows
    rows = _rows(batches)
    assert sorted(rows[:203]) == list(range(203)) and sorted(rows[203:406]) == list(range(203))
    assert rows[:203] != rows[203:406]
    # each run is read as one contiguous slice, cut at most once more by the end of a batch
    pieces = [np.split(batch, np.flatnonzero(np.diff(batch) != 1) + 1) for batch in (np.array(_rows([b])) for b in batches)]
    n_runs = sum(-(-len(shard) // 4) for shard in _shards())  # shards cut into runs of 4 rows
    assert all(len(piece) <= 4 for parts in pieces for piece in parts)
    assert sum(len(parts) for parts in pieces) <= 2 * n_runs + 1 + len(batches)  # two epochs and the start of a third


def test_runs_mode_resumes_at_any_batch() -> None:
    config = ShuffleConfig(batch_size=10, runs_per_batch=3, seed=5, mode="runs")
    straight = list(itertools.islice(ShuffledBatches(_shards(), config).batches(), 50))
    for start in (1, 19, 20, 21, 47):
        resumed = list(itertools.islice(ShuffledBatches(_shards(), config).batches(start_batch=start), 50 - start))
        assert _rows(resumed) == _rows(straight[start:])
        assert all(torch.equal(a, b) for a, b in zip(resumed, straight[start:], strict=True))


# A store in miniature: 512 images x 16 tokens in shards of 128 images; a batch of 256 rows is 8
# runs of 32 rows, a quarter of a shard's image count, as in a real store (4096 / 8 rows per run,
# ~1800 images per 512 MiB shard of ViT-B patch tokens).
N_IMAGES, TOKENS, IMAGES_PER_SHARD, BATCH = 512, 16, 128, 256


def _image_shards(shuffled: bool) -> list[np.ndarray]:
    """Shards whose every row holds the number of its image."""
    image_n = np.repeat(np.arange(N_IMAGES, dtype=np.float16), TOKENS)[:, None]
    rows = IMAGES_PER_SHARD * TOKENS
    shards = [image_n[start : start + rows] for start in range(0, len(image_n), rows)]
    return [shard[shuffled_row_order(0, index, len(shard))] if shuffled else shard for index, shard in enumerate(shards)]


def _mixing(batches: list[torch.Tensor]) -> tuple[float, float]:
    """Mean over batches of the number of distinct images, and of the most tokens of one image."""
    images = [batch[:, 0].numpy().astype(np.int64) for batch in batches]
    return float(np.mean([len(np.unique(i)) for i in images])), float(np.mean([np.bincount(i).max() for i in images]))


def test_runs_of_preshuffled_rows_mix_images_like_a_uniform_draw() -> None:
    n_rows = N_IMAGES * TOKENS
    # a uniform draw of BATCH rows without replacement misses an image with probability
    # C(n - T, B) / C(n, B); its largest share of one image, by simulation
    missed = np.exp(np.log((n_rows - TOKENS - np.arange(BATCH)) / (n_rows - np.arange(BATCH))).sum())
    uniform_distinct = N_IMAGES * (1 - missed)
    rng = np.random.default_rng(0)
    draws = [rng.choice(n_rows, BATCH, replace=False) // TOKENS for _ in range(2000)]
    uniform_max = float(np.mean([np.bincount(draw).max() for draw in draws]))
    assert uniform_distinct == pytest.approx(204.1, abs=0.1) and uniform_max == pytest.approx(3.5, abs=0.1)

    config = ShuffleConfig(batch_size=BATCH, seed=3, mode="runs")
    for shuffled in (True, False):
        batches = list(itertools.islice(ShuffledBatches(_image_shards(shuffled), config).batches(), 64))  # two epochs
        distinct, most = _mixing(batches)
        well_mixed = distinct >= 0.9 * uniform_distinct and most <= uniform_max + 1
        # on rows stored image after image, a run is two whole images: ~16 images a batch
        assert well_mixed == shuffled, (shuffled, distinct, most)
