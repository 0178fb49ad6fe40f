"""The progress files of a resumable batch job: fixed batches, a job that must match, whole batches
read back, and damaged or foreign files refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from traitlens.errors import TraitlensError
from traitlens.progress import JOB, BatchProgress, fixed_batches


@given(n_items=st.integers(0, 200), batch_size=st.integers(1, 50), n_done=st.integers(0, 10))
def test_the_unfinished_batches_are_batched_again_exactly_as_before(n_items: int, batch_size: int, n_done: int) -> None:
    batches = fixed_batches(n_items, batch_size)
    assert [item for batch in batches for item in batch] == list(range(n_items))
    left = [item for batch in batches[n_done:] for item in batch]
    assert fixed_batches(len(left), batch_size) == [[left.index(item) for item in batch] for batch in batches[n_done:]]


def test_a_job_is_written_once_then_must_match(tmp_path: Path) -> None:
    progress = BatchProgress(tmp_path, "maps", {"gamma": 0.6, "n_images": 3}, TraitlensError)
    assert progress.finished(tmp_path / "summary.json", "traitlens.test") is None
    assert json.loads((tmp_path / JOB).read_text())["job"] == {"gamma": 0.6, "n_images": 3}
    progress.save_tensors(0, {"sums_w": torch.arange(4.0, dtype=torch.float64)})
    assert torch.equal(progress.load_tensors(0)["sums_w"], torch.arange(4.0, dtype=torch.float64))  # type: ignore[index]
    assert progress.load_tensors(1) is None
    other = BatchProgress(tmp_path, "maps", {"gamma": 0.0, "n_images": 3}, TraitlensError)
    with pytest.raises(TraitlensError, match=r"holds maps of another job \(different gamma\).*--overwrite"):
        other.finished(tmp_path / "summary.json", "traitlens.test")


def test_a_finished_result_is_returned_and_the_progress_files_go(tmp_path: Path) -> None:
    job = {"gamma": 0.6}
    progress = BatchProgress(tmp_path, "maps", job, TraitlensError)
    progress.finished(tmp_path / "summary.json", "traitlens.test")
    progress.save_json(0, {"images": []})
    (tmp_path / "summary.json").write_text(json.dumps({"format": "traitlens.test", "job": job, "images": []}))
    assert progress.finished(tmp_path / "summary.json", "traitlens.test") == {"format": "traitlens.test", "job": job, "images": []}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["summary.json"]


def test_a_result_without_its_job_is_not_taken_for_this_one(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"format": "traitlens.test", "images": []}))
    with pytest.raises(TraitlensError, match="already holds traitlens maps; pass --overwrite"):
        BatchProgress(tmp_path, "maps", {}, TraitlensError).finished(tmp_path / "summary.json", "traitlens.test")


@pytest.mark.parametrize("content", [b"", b"not safetensors", b"\xff" * 64])
def test_a_damaged_batch_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    progress = BatchProgress(tmp_path, "maps", {}, TraitlensError)
    progress.path(0, ".safetensors").parent.mkdir(parents=True)
    progress.path(0, ".safetensors").write_bytes(content)
    with pytest.raises(TraitlensError, match=r"batch-000000.safetensors is damaged .*; pass --overwrite") as refused:
        progress.load_tensors(0)
    assert "\n" not in str(refused.value)
