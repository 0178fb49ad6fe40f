"""Look-alike flip rates on hand-made predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from traitlens.errors import DataError, TraitlensError
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.flips import lookalike_flip_rate, lookalike_map


def test_lookalike_flip_rate_on_a_hand_made_table() -> None:
    species = [0, 0, 1, 1, 2, 0]
    before = [0, 0, 1, 0, 2, 0]  # image 3 was wrong before: not eligible; species 2 has no look-alike
    after = [1, 0, 2, 1, 0, 1]
    result = lookalike_flip_rate(before, after, species, {0: 1, 1: 0})
    # eligible: images 0, 1, 2, 5; to the look-alike: 0 and 5; changed at all: 0, 2 and 5
    assert result == {"n_images": 6, "n_eligible": 4, "n_flipped": 2, "n_changed": 3, "flip_rate": 0.5, "change_rate": 0.75}
    assert lookalike_flip_rate([2], [0], [2], {0: 1})["flip_rate"] is None
    with pytest.raises(TraitlensError, match=r"\(n,\) each"):
        lookalike_flip_rate([0, 1], [0], [0, 1], {0: 1})


def test_lookalike_map_from_the_benchmark(benchmark: tuple[Path, np.ndarray]) -> None:
    bench = read_benchmark(benchmark[0])
    assert lookalike_map(bench, ["crow", "finch", "sparrow"]) == {1: 2, 2: 1}
    with pytest.raises(DataError, match="sparrow"):
        lookalike_map(bench, ["finch"])
