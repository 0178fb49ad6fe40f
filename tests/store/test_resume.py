"""A killed extraction resumes and ends with exactly the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.resume import file_bytes
from tests.store.conftest import TINY_VIT, make_class_folder
from traitlens.atomic import TEMP_SUFFIX, NpyStream
from traitlens.store import ActivationStore, ExtractConfig, extract
from traitlens.store.files import MANIFEST, shard_record_path


def test_crash_mid_shard_then_resume_is_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_class_folder(tmp_path / "images")
    config = ExtractConfig(model=TINY_VIT, data=images, layers=("0", "1"), out=tmp_path / "a",
                           pretrained=False, batch_size=2, images_per_shard=2)
    extract(config, show_progress=False)

    resumed = ExtractConfig(**{**config.__dict__, "out": tmp_path / "b"})
    real_commit = NpyStream.commit
    calls = {"n": 0}

    def crash_on_fourth_commit(stream: NpyStream) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # shard 1, second layer: shard 1's first layer is on disk, no record yet
            raise KeyboardInterrupt  # its streamed rows are left in the temporary file
        real_commit(stream)

    monkeypatch.setattr(NpyStream, "commit", crash_on_fourth_commit)
    with pytest.raises(KeyboardInterrupt):
        extract(resumed, show_progress=False)
    assert shard_record_path(resumed.out, 0).is_file() and not shard_record_path(resumed.out, 1).is_file()
    assert not (resumed.out / MANIFEST).exists()

    monkeypatch.setattr(NpyStream, "commit", real_commit)
    extract(resumed, show_progress=False)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")


def test_a_shard_with_a_skipped_image_is_written_whole_and_identical_on_resume(tmp_path: Path) -> None:
    """Streamed shard files plan on every image; an unreadable one makes the shard written whole."""
    images = make_class_folder(tmp_path / "images")
    broken = sorted(images.rglob("*.png"))[1]
    broken.write_bytes(b"not an image")
    config = ExtractConfig(model=TINY_VIT, data=images, layers=("0", "1"), out=tmp_path / "a",
                           pretrained=False, batch_size=1, images_per_shard=3)
    manifest = extract(config, show_progress=False)
    assert manifest["n_skipped"] == 1
    store = ActivationStore(tmp_path / "a")
    assert store.layer("blocks.0").shard_rows[0] == 2 * store.layer("blocks.0").tokens_per_image
    assert not list((tmp_path / "a").rglob("*" + TEMP_SUFFIX))


def _extract_command(images: Path, out: Path, row_order: str) -> list[str]:
    return [sys.executable, "-m", "traitlens", "extract", "--model", "timm:vit_tiny_patch16_224?depth=4",
            "--random-init", "--data", str(images), "--layers", "1,3", "--out", str(out),
            "--batch-size", "2", "--images-per-shard", "2", "--row-order", row_order]


@pytest.mark.parametrize("row_order", ["image", "shuffled"])  # shard files streamed, or written whole
def test_sigkill_then_resume_is_identical(tmp_path: Path, row_order: str) -> None:
    images = make_class_folder(tmp_path / "images", per_class=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_extract_command(images, tmp_path / "a", row_order), check=True, env=env, capture_output=True)

    killed = subprocess.Popen(_extract_command(images, tmp_path / "b", row_order), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not shard_record_path(tmp_path / "b", 1).exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "b" / MANIFEST).exists(), "the run finished before it could be killed"

    subprocess.run(_extract_command(images, tmp_path / "b", row_order), check=True, env=env, capture_output=True)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
