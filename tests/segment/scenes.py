"""Hand-made scenes whose segmentation is known: one shape (label 1, ``shape``) with a white stripe
(label 2, ``stripe``) across it on a noisy green ground, drawn where and in the colour asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("background", "shape", "stripe")


def scene(top: int, left: int, shape_rgb: tuple[int, int, int], seed: int, size: int = 96) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = (np.asarray([90, 120, 80]) + rng.normal(0, 25, (size, size, 3))).clip(0, 255)
    labels = np.zeros((size, size), np.uint8)
    labels[top:top + 36, left:left + 28] = 1
    labels[top + 14:top + 22, left:left + 28] = 2
    rgb[labels == 1] = shape_rgb
    rgb[labels == 2] = (240, 240, 240)
    return Image.fromarray(rgb.astype(np.uint8)), labels


SUPPORT = (20, 20, (200, 60, 40))
# the same shape moved and recoloured
MOVED = ((32, 50, (60, 60, 200)), (50, 28, (200, 180, 40)), (20, 60, (150, 60, 160)))


def write_scenes(root: Path) -> tuple[Path, Path, Path, list[np.ndarray]]:
    """``root/support.png`` and its mask ``root/support-mask.png`` with ``root/names.txt``, and the
    moved scenes in ``root/data/``; returns those paths and the moved scenes' true label maps."""
    (root / "data").mkdir(parents=True)
    image, labels = scene(*SUPPORT, seed=0)
    image.save(root / "support.png")
    Image.fromarray(labels).save(root / "support-mask.png")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n")
    truths = []
    for number, (top, left, rgb) in enumerate(MOVED):
        moved, moved_labels = scene(top, left, rgb, seed=1 + number)
        moved.save(root / "data" / f"moved-{number}.png")
        truths.append(moved_labels)
    return root / "support.png", root / "support-mask.png", root / "data", truths


def iou(pred_hw: np.ndarray, truth_hw: np.ndarray, label: int) -> float:
    union = ((pred_hw == label) | (truth_hw == label)).sum()
    return float(((pred_hw == label) & (truth_hw == label)).sum() / union) if union else 1.0
