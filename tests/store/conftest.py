"""Fixtures for store tests: a tiny random-init ViT and small image folders made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_VIT = "timm:vit_tiny_patch16_224?img_size=32&depth=2&embed_dim=32&num_heads=2&num_classes=3"


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_class_folder(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("ant", "bee", "cat")) -> Path:
    seed = 0
    for name in classes:
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.png", seed)
            seed += 1
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "images")


@pytest.fixture
def folder_with_corrupt(tmp_path: Path) -> Path:
    root = make_class_folder(tmp_path / "images")
    (root / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    return root
