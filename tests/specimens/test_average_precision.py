"""Average precision against scikit-learn's definition, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.errors import TraitlensError
from traitlens.specimens import average_precision as average_precision_module
from traitlens.specimens.average_precision import average_precision, average_precision_by_target


def brute_force_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """scikit-learn's definition spelled out: sum over distinct thresholds of (R_k - R_k-1) P_k."""
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= threshold
        true_positives = (predicted & positives).sum()
        recall = true_positives / positives.sum()
        total += (recall - previous_recall) * true_positives / predicted.sum()
        previous_recall = recall
    return total


# -- average precision ---------------------------------------------------------------------------


def test_ap_of_perfect_reversed_and_constant_features() -> None:
    positives = np.array([True, True, False, False, False])
    scores = np.array([[5, 1, 7], [4, 2, 7], [3, 3, 7], [2, 4, 7], [1, 5, 7]], dtype=np.float32)
    ap = average_precision(scores, positives)
    # reversed: the positives come 4th and 5th, at precisions 1/4 and 2/5; a constant ties all: 2/5
    assert ap.tolist() == pytest.approx([1.0, (1 / 4 + 2 / 5) / 2, 2 / 5], abs=1e-12)


def test_ap_equals_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    for case in range(60):
        n = int(rng.integers(2, 30))
        scores = rng.integers(0, 1 + case % 6, (n, 4)).astype(np.float32) if case % 3 else rng.normal(size=(n, 4)).astype(np.float32)
        positives = rng.random(n) < 0.4
        positives[rng.integers(n)] = True
        expected = [brute_force_ap(scores[:, j], positives) for j in range(4)]
        assert average_precision(torch.from_numpy(scores), torch.from_numpy(positives)).tolist() == pytest.approx(expected, abs=1e-12)


def test_ap_in_blocks_equals_ap_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (50, 9)).astype(np.float32)
    positives = rng.random((50, 3)) < 0.3
    at_once = average_precision_by_target(scores, positives)
    monkeypatch.setattr(average_precision_module, "_AP_BLOCK_ELEMENTS", 120)  # two columns a block
    assert torch.equal(average_precision_by_target(scores, positives), at_once)
    assert at_once.shape == (3, 9)


def test_ap_finds_the_one_informative_feature_among_many() -> None:
    rng = np.random.default_rng(2)
    positives = rng.random(400) < 0.2
    scores = rng.normal(size=(400, 300)).astype(np.float32)
    scores[:, 137] += 3 * positives
    ap = average_precision(scores, positives)
    assert int(ap.argmax()) == 137 and float(ap[137]) > 0.9 > float(ap[np.arange(300) != 137].max())


def test_ap_without_positives_is_nan_and_bad_shapes_fail() -> None:
    assert torch.isnan(average_precision(np.ones((3, 2), np.float32), np.zeros(3, bool))).all()
    with pytest.raises(TraitlensError, match="same n"):
        average_precision(np.ones((3, 2), np.float32), np.ones(4, bool))
    with pytest.raises(TraitlensError, match="boolean"):
        average_precision(np.ones((3, 2), np.float32), np.ones(3, np.int64))
