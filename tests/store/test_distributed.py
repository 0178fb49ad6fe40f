"""Two torchrun workers (gloo, CPU) write one store equal to a single process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.resume import file_bytes
from tests.store.conftest import TINY_VIT, make_class_folder
from traitlens.distributed import Workers
from traitlens.errors import TraitlensError


def _extract(images: Path, out: Path, launcher: list[str], row_order: str) -> subprocess.CompletedProcess[str]:
    args = ["--model", TINY_VIT, "--random-init", "--data", str(images), "--layers", "0,1", "--out", str(out),
            "--batch-size", "2", "--images-per-shard", "2", "--row-order", row_order]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "traitlens", "extract", *args], env=env, capture_output=True, text=True, check=True)


@pytest.mark.parametrize("row_order", ["image", "shuffled"])  # shard files streamed, or written whole
def test_two_workers_write_the_same_store_as_one(tmp_path: Path, row_order: str) -> None:
    images = make_class_folder(tmp_path / "images", per_class=3)
    _extract(images, tmp_path / "single", [sys.executable], row_order)
    # --standalone: a free port, so parallel runs never collide
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    _extract(images, tmp_path / "multi", torchrun, row_order)
    single, multi = file_bytes(tmp_path / "single"), file_bytes(tmp_path / "multi")
    assert sorted(single) == sorted(multi)
    assert single == multi


def test_a_cuda_device_without_a_gpu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TraitlensError, match="sees no CUDA GPU"):
        Workers(0, 1).device("cuda")
    with pytest.raises(TraitlensError, match="unknown device"):
        Workers(0, 1).device("gpu0")
    assert Workers(0, 1).device("auto") == torch.device("cpu")
