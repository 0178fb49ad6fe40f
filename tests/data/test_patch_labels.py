import numpy as np
import pytest

from traitlens.data.patch_labels import patch_labels
from traitlens.errors import DataError


def test_divisible_map_votes_per_block() -> None:
    labels_hw = np.array(
        [
            [1, 1, 2, 2],
            [1, 0, 2, 3],
            [0, 0, 3, 3],
            [0, 4, 3, 3],
        ]
    )

    result = patch_labels(labels_hw, (2, 2), n_classes=5)

    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, [1, 2, 0, 3])


def test_non_divisible_map_assigns_rows_by_floor() -> None:
    # H=5, grid_h=2: rows 0,1,2 -> cell 0 (floor(y*2/5)), rows 3,4 -> cell 1.
    # W=3, grid_w=2: cols 0,1 -> cell 0, col 2 -> cell 1.
    labels_hw = np.array(
        [
            [0, 0, 1],
            [2, 2, 1],
            [2, 2, 0],
            [3, 3, 3],
            [3, 1, 1],
        ]
    )

    np.testing.assert_array_equal(patch_labels(labels_hw, (2, 2), n_classes=4), [2, 1, 3, 1])


def test_tie_goes_to_the_smallest_label() -> None:
    labels_hw = np.array([[5, 2, 2, 5], [5, 2, 2, 5]])

    np.testing.assert_array_equal(patch_labels(labels_hw, (1, 2), n_classes=6), [2, 2])
    np.testing.assert_array_equal(patch_labels(labels_hw.T, (2, 1), n_classes=6), [2, 2])


def test_grid_equal_to_map_is_the_map_flattened() -> None:
    labels_hw = np.random.default_rng(0).integers(0, 7, (6, 9))

    np.testing.assert_array_equal(patch_labels(labels_hw, (6, 9), 7), labels_hw.ravel())


def test_matches_a_per_cell_reference_on_a_random_map() -> None:
    rng = np.random.default_rng(1)
    labels_hw = rng.integers(0, 4, (37, 23))
    grid_h, grid_w = 5, 4
    expected = []
    for row in range(grid_h):
        for col in range(grid_w):
            ys = [y for y in range(37) if y * grid_h // 37 == row]
            xs = [x for x in range(23) if x * grid_w // 23 == col]
            cell = labels_hw[np.ix_(ys, xs)].ravel()
            expected.append(np.bincount(cell, minlength=4).argmax())

    np.testing.assert_array_equal(patch_labels(labels_hw, (grid_h, grid_w), 4), expected)


def test_out_of_range_label_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"values 0\.\.255 but n_classes is 21"):
        patch_labels(np.array([[0, 255]]), (1, 1), n_classes=21)


@pytest.mark.parametrize("grid_hw", [(3, 1), (1, 0)])
def test_grid_that_does_not_fit_is_rejected(grid_hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="must be non-empty and fit"):
        patch_labels(np.zeros((2, 2), dtype=np.int64), grid_hw, n_classes=1)
