"""The numbers of calibration for the classes a fine-tuning left out (Mai et al., NeurIPS 2024,
"Fine-tuning is fine, if calibrated"): one scalar gamma added to the logits of every absent class.

Plain functions of logits and labels, so tests can check them on hand-made logits:
- :func:`average_logit_gap`: gamma from images of the fine-tuned classes alone (the paper's ALG:
  the mean, over images, of the mean logit of the fine-tuned classes other than the image's own,
  minus the mean of the mean absent-class logit);
- :func:`seen_unseen_curve` and :func:`ausuc`: every gamma at which a prediction changes, the
  accuracies on fine-tuned and on absent classes there, and the area under that curve (AUSUC);
- :func:`split_accuracies`: accuracy on all images, on those of fine-tuned and of absent classes,
  each an argmax over all the model's classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def calibrated(logits_nc: torch.Tensor, absent_c: torch.Tensor, gamma: float) -> torch.Tensor:
    """The logits with ``gamma`` added to every absent class (``absent_c``: a bool mask of classes)."""
    return logits_nc + gamma * absent_c.to(logits_nc)


def average_logit_gap(logits_nc: torch.Tensor, labels_n: torch.Tensor, absent_c: torch.Tensor) -> float:
    """ALG's gamma from images of fine-tuned classes (labels all outside ``absent_c``)."""
    if bool(absent_c[labels_n].any()):
        raise ValueError("the average logit gap is measured on images of fine-tuned classes only")
    seen_c = ~absent_c
    if int(seen_c.sum()) < 2 or not bool(absent_c.any()):
        raise ValueError("the average logit gap needs two fine-tuned classes and one absent class")
    others_nc = seen_c.expand_as(logits_nc).clone()
    others_nc[torch.arange(len(labels_n)), labels_n] = False  # the image's own class is left out
    seen_mean_n = (logits_nc * others_nc).sum(1) / others_nc.sum(1)
    absent_mean_n = logits_nc[:, absent_c].mean(1)
    return float(seen_mean_n.mean() - absent_mean_n.mean())


@dataclass(frozen=True)
class SplitAccuracy:
    all: float | None
    finetuned: float | None
    """Images of fine-tuned classes."""
    absent: float | None
    """Images of absent classes."""


def _mean(correct_n: torch.Tensor) -> float | None:
    return float(correct_n.float().mean()) if len(correct_n) else None


def split_accuracies(logits_nc: torch.Tensor, labels_n: torch.Tensor, absent_c: torch.Tensor) -> SplitAccuracy:
    correct_n = logits_nc.argmax(1) == labels_n
    absent_n = absent_c[labels_n]
    return SplitAccuracy(_mean(correct_n), _mean(correct_n[~absent_n]), _mean(correct_n[absent_n]))


@dataclass(frozen=True)
class SeenUnseenCurve:
    gammas: np.ndarray
    """Increasing; at each, the accuracies below."""
    finetuned: np.ndarray
    absent: np.ndarray


def seen_unseen_curve(logits_nc: torch.Tensor, labels_n: torch.Tensor, absent_c: torch.Tensor) -> SeenUnseenCurve:
    """Accuracy on fine-tuned and on absent classes' images at every gamma where a prediction
    changes (the midpoints between the images' gaps), from all-fine-tuned to all-absent predictions."""
    seen_c = ~absent_c
    seen_logits = logits_nc.masked_fill(~seen_c, -torch.inf)
    absent_logits = logits_nc.masked_fill(seen_c, -torch.inf)
    right_if_seen_n = (seen_logits.argmax(1) == labels_n).numpy()
    right_if_absent_n = (absent_logits.argmax(1) == labels_n).numpy()
    gap_n = (seen_logits.max(1).values - absent_logits.max(1).values).double().numpy()  # absent wins once gamma > gap
    steps = np.unique(gap_n)
    gammas = np.concatenate([[steps[0] - 1], (steps[:-1] + steps[1:]) / 2, [steps[-1] + 1]])
    absent_n = absent_c[labels_n].numpy()
    absent_wins_gn = gammas[:, None] > gap_n[None, :]
    correct_gn = np.where(absent_wins_gn, right_if_absent_n[None, :], right_if_seen_n[None, :])
    finetuned = correct_gn[:, ~absent_n].mean(1) if (~absent_n).any() else np.zeros(len(gammas))
    absent = correct_gn[:, absent_n].mean(1) if absent_n.any() else np.zeros(len(gammas))
    return SeenUnseenCurve(gammas, finetuned, absent)


def ausuc(curve: SeenUnseenCurve) -> float:
    """The area under absent-class accuracy against fine-tuned-class accuracy (trapezoids)."""
    # along decreasing gamma the fine-tuned-class accuracy only grows: the curve's own order
    x, y = curve.finetuned[::-1], curve.absent[::-1]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def best_total_gamma(curve: SeenUnseenCurve, labels_n: torch.Tensor, absent_c: torch.Tensor) -> float:
    """The gamma of the curve with the highest accuracy over all its images (the smallest such gamma
    in magnitude among ties): PCV's choice on a pseudo split."""
    absent_share = float(absent_c[labels_n].float().mean())
    total = (1 - absent_share) * curve.finetuned + absent_share * curve.absent
    best = np.flatnonzero(total == total.max())
    return float(curve.gammas[best[np.argmin(np.abs(curve.gammas[best]))]])
