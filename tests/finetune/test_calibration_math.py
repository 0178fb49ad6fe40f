"""Calibration's numbers on hand-made logits whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.finetune.calibration_math import (
    ausuc,
    average_logit_gap,
    best_total_gamma,
    calibrated,
    seen_unseen_curve,
    split_accuracies,
)

ABSENT = torch.tensor([False, False, True, True])


def _logits(labels: list[int], shift: float) -> torch.Tensor:
    """Each image's own class at 3, the other classes at 0, absent classes lowered by ``shift``."""
    logits = torch.zeros(len(labels), 4)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = 3.0
    return logits - shift * ABSENT.float()


def test_the_average_logit_gap_is_the_shift_of_the_absent_classes() -> None:
    seen = torch.tensor([0, 1, 0, 1])
    assert average_logit_gap(_logits(seen.tolist(), 4.0), seen, ABSENT) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="fine-tuned classes only"):
        average_logit_gap(_logits([0, 2], 4.0), torch.tensor([0, 2]), ABSENT)


def test_gamma_brings_back_the_absent_classes() -> None:
    labels = torch.tensor([0, 1, 2, 3, 2, 3])
    logits = _logits(labels.tolist(), 4.0)  # absent images score 3 - 4 = -1 on their class, 0 elsewhere: all wrong
    before = split_accuracies(logits, labels, ABSENT)
    assert (before.finetuned, before.absent) == (1.0, 0.0)
    gamma = average_logit_gap(logits[:2], labels[:2], ABSENT)
    after = split_accuracies(calibrated(logits, ABSENT, gamma), labels, ABSENT)
    assert (after.all, after.finetuned, after.absent) == (1.0, 1.0, 1.0)


def test_the_curve_runs_from_all_fine_tuned_to_all_absent_and_its_area() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    curve = seen_unseen_curve(_logits(labels.tolist(), 4.0), labels, ABSENT)
    assert np.all(np.diff(curve.gammas) > 0)
    assert (curve.finetuned[0], curve.absent[0]) == (1.0, 0.0)
    assert (curve.finetuned[-1], curve.absent[-1]) == (0.0, 1.0)
    assert ausuc(curve) == pytest.approx(1.0)  # one gamma is right for every image: the curve reaches (1, 1)
    gamma = best_total_gamma(curve, labels, ABSENT)
    assert split_accuracies(calibrated(_logits(labels.tolist(), 4.0), ABSENT, gamma), labels, ABSENT).all == 1.0


def test_a_confused_model_has_a_smaller_area() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    logits = _logits(labels.tolist(), 0.0)
    logits[2] = torch.tensor([0.0, 0.0, 0.0, 3.0])  # an absent image taken for the other absent class
    assert ausuc(seen_unseen_curve(logits, labels, ABSENT)) == pytest.approx(0.5)
