"""Fixtures shared by the scoring and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.specimens.hand_made_benchmark import make_benchmark


@pytest.fixture
def benchmark(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return make_benchmark(tmp_path / "specimens")


@pytest.fixture(scope="module")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes that differ by a colored square in a fixed corner, on noise."""
    root = tmp_path_factory.mktemp("colors")
    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("green", 1), ("blue", 2)):
        (root / label).mkdir()
        for i in range(40):
            pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            pixels[4:14, 4:14, channel] = 255
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")
    return root
