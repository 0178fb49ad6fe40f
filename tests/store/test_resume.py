"""A killed extraction resumes and ends with exactly the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import traitlens.store.extraction as extract_module
from tests.resume import file_bytes
from tests.store.conftest import TINY_VIT, make_class_folder
from traitlens.store import ExtractConfig, extract
from traitlens.store.files import MANIFEST, shard_record_path


def test_crash_mid_shard_then_resume_is_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_class_folder(tmp_path / "images")
    config = ExtractConfig(model=TINY_VIT, data=images, layers=("0", "1"), out=tmp_path / "a",
                           pretrained=False, batch_size=2, images_per_shard=2)
    extract(config, show_progress=False)

    resumed = ExtractConfig(**{**config.__dict__, "out": tmp_path / "b"})
    real_save = extract_module.atomic_save_npy
    calls = {"n": 0}

    def crash_on_fourth_save(path: Path, array: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # shard 1, second layer: shard 1's first layer is on disk, no record yet
            path.with_name(path.name + ".tmp").write_bytes(b"half a file")
            raise KeyboardInterrupt
        real_save(path, array)  # type: ignore[arg-type]

    monkeypatch.setattr(extract_module, "atomic_save_npy", crash_on_fourth_save)
    with pytest.raises(KeyboardInterrupt):
        extract(resumed, show_progress=False)
    assert shard_record_path(resumed.out, 0).is_file() and not shard_record_path(resumed.out, 1).is_file()
    assert not (resumed.out / MANIFEST).exists()

    monkeypatch.setattr(extract_module, "atomic_save_npy", real_save)
    extract(resumed, show_progress=False)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")


def _extract_command(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "traitlens", "extract", "--model", "timm:vit_tiny_patch16_224?depth=4",
            "--random-init", "--data", str(images), "--layers", "1,3", "--out", str(out),
            "--batch-size", "2", "--images-per-shard", "2"]


def test_sigkill_then_resume_is_identical(tmp_path: Path) -> None:
    images = make_class_folder(tmp_path / "images", per_class=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_extract_command(images, tmp_path / "a"), check=True, env=env, capture_output=True)

    killed = subprocess.Popen(_extract_command(images, tmp_path / "b"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not shard_record_path(tmp_path / "b", 1).exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "b" / MANIFEST).exists(), "the run finished before it could be killed"

    subprocess.run(_extract_command(images, tmp_path / "b"), check=True, env=env, capture_output=True)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
