"""Fixtures shared by the scoring tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.specimens.hand_made_benchmark import make_benchmark


@pytest.fixture
def benchmark(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return make_benchmark(tmp_path / "specimens")

