"""The one output policy: foreign folders untouched, own folders resumed or replaced on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlens.errors import TraitlensError
from traitlens.output_folder import OWNER_FILE, claim_output_file, claim_output_folder, output_owner


def test_a_new_folder_is_claimed_and_marked(tmp_path: Path) -> None:
    assert claim_output_folder(tmp_path / "new", "explain") is False
    assert output_owner(tmp_path / "new") == "explain"


def test_a_foreign_folder_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("the user's")
    for overwrite in (False, True):
        with pytest.raises(TraitlensError, match="holds no traitlens output"):
            claim_output_folder(tmp_path, "probe", overwrite=overwrite)
    assert (tmp_path / "mine.txt").read_text() == "the user's"


def test_another_commands_output_is_refused(tmp_path: Path) -> None:
    claim_output_folder(tmp_path / "out", "steer")
    (tmp_path / "out" / "effect.json").write_text("{}")
    with pytest.raises(TraitlensError, match="traitlens steer"):
        claim_output_folder(tmp_path / "out", "explain", overwrite=True)
    # even when nothing but the other command's mark is there
    claim_output_folder(tmp_path / "bare", "steer")
    with pytest.raises(TraitlensError, match="traitlens steer"):
        claim_output_folder(tmp_path / "bare", "explain")


def test_own_output_is_refused_then_replaced_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_output_folder(out, "explain")
    (out / "summary.json").write_text("{}")
    with pytest.raises(TraitlensError, match="--overwrite"):
        claim_output_folder(out, "explain")
    assert claim_output_folder(out, "explain", overwrite=True) is False
    assert sorted(path.name for path in out.iterdir()) == [OWNER_FILE]


def test_resumable_own_output_resumes_and_legacy_files_are_recognized(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text("{}")
    assert claim_output_folder(tmp_path, "extract", resumable=True, own_files=("job.json",)) is True
    assert claim_output_folder(tmp_path, "extract", resumable=True, overwrite=True, own_files=("job.json",)) is False
    assert not (tmp_path / "job.json").exists()


def test_a_run_that_failed_before_its_first_result_can_start_again(tmp_path: Path) -> None:
    claim_output_folder(tmp_path / "out", "explain")
    assert claim_output_folder(tmp_path / "out", "explain") is False


def test_paths_through_files_and_existing_output_files(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraitlensError, match="is a file"):
        claim_output_folder(tmp_path / "file", "explain")
    with pytest.raises(TraitlensError, match="cannot be created"):
        claim_output_folder(tmp_path / "file" / "inside", "explain")
    with pytest.raises(TraitlensError, match="already exists"):
        claim_output_file(tmp_path / "file")
    claim_output_file(tmp_path / "file", overwrite=True)
    with pytest.raises(TraitlensError, match="is a folder"):
        claim_output_file(tmp_path)
