"""The one definition of a positive patch: pixel shares per patch, the coverage rule and the best-patch rule."""

from __future__ import annotations

import numpy as np
import pytest

from traitlens.errors import DataError, TraitlensError
from traitlens.features.patch_positives import (
    check_min_coverage,
    describe_positives,
    patch_coverage,
    patch_positives,
)


def test_patch_coverage_on_a_hand_made_map() -> None:
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 2  # 1 of the 4 pixels of patch 0
    labels[2:4, 2:4] = 1  # all of patch 3
    labels[2, 0:2] = 2  # half of patch 2
    coverage = patch_coverage(labels, (2, 2), 3)
    assert coverage.tolist() == [[0.75, 0, 0.25], [1, 0, 0], [0.5, 0, 0.5], [0, 1, 0]]
    # uneven cells: rows 0-2 and 3-4 of a 5-row map
    assert patch_coverage(np.eye(5, dtype=np.int64), (2, 1), 2)[:, 1].tolist() == pytest.approx([3 / 15, 2 / 10])
    with pytest.raises(DataError, match="values 0..2"):
        patch_coverage(labels, (2, 2), 2)
    with pytest.raises(DataError, match="does not fit"):
        patch_coverage(labels, (5, 2), 3)


def test_a_small_label_is_positive_on_its_best_patch() -> None:
    coverage = np.array([[0.5, 0.02, 0.0], [0.3, 0.05, 0.0], [0.0, 0.0, 0.0]])
    assert patch_positives(coverage, [0, 1, 2], min_coverage=0.1).tolist() == [
        [True, False, False], [True, True, False], [False, False, False]]
    # ties for the best patch: each of them is positive
    assert patch_positives(np.array([[0.05], [0.05], [0.0]]), [0], min_coverage=0.1)[:, 0].tolist() == [True, True, False]


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_min_coverage_outside_0_1_is_refused(value: object) -> None:
    with pytest.raises(TraitlensError, match="min_coverage must be a number in"):
        check_min_coverage(value, TraitlensError)  # type: ignore[arg-type]
    check_min_coverage(1, TraitlensError)


def test_the_definition_is_named_with_its_share() -> None:
    assert "at least 25% of its pixels" in describe_positives(0.25) and "the most of it" in describe_positives(0.25)
