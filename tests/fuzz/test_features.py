"""``traitlens features`` refuses bad input in one line, exit 2, every file left as it was: bad
numeric flags, damaged files of a features folder (each file it reads), paths in its manifest that
leave the folder, and output folders that are not its own."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from tests.features.conftest import STORE_MODEL, save_random_sae
from tests.fuzz.harness import assert_refused, run_cli, snapshot
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.store import ExtractConfig, extract

FUZZ = settings(max_examples=20, deadline=None)
INT_FLAGS = ("--top-k", "--batch-size", "--chunk-tokens", "--report-latents")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """(the features command without --out, a folder it finished): 12 specimens through a tiny ViT,
    a random ReLU SAE, chunks that end mid-image."""
    root = tmp_path_factory.mktemp("fuzz_features")
    generate(GenerateConfig(root / "specimens", n=12, seed=5, size=64), show_progress=False)
    extract(ExtractConfig(model=STORE_MODEL, data=root / "specimens", layers=("1",), out=root / "acts", pretrained=False,
                          tokens="all", dtype="float32", batch_size=8), show_progress=False)
    sae = save_random_sae(root / "sae", activation="relu")
    command = ["features", "--sae", str(sae), "--acts", str(root / "acts"), "--top-k", "4", "--batch-size", "64",
               "--chunk-tokens", "300"]
    code, _, err = run_cli([*command, "--out", str(root / "finished")])
    assert code == 0, err
    return command, root / "finished"


@contextmanager
def features_copy(job: tuple[list[str], Path]) -> Iterator[Path]:
    """A fresh copy of the finished folder (one per hypothesis example)."""
    with tempfile.TemporaryDirectory() as temp:
        copy = Path(temp) / "features"
        shutil.copytree(job[1], copy)
        yield copy


def _not_a_positive_int() -> st.SearchStrategy[str]:
    # not "--": argparse drops it from "--flag=--" and passes [] without calling the type (a parser-wide issue)
    return st.one_of(st.integers(max_value=0).map(str), st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda value: not value.is_integer()).map(repr), st.sampled_from(["", "ten", "1e3", "0x10", "4.0", "nan", "-"]),
        st.text(st.characters(whitelist_categories=("Lu", "Ll", "P")), min_size=1, max_size=8).filter(lambda text: text != "--"))


def _not_a_coverage() -> st.SearchStrategy[str]:
    return st.one_of(st.floats(max_value=0).map(repr), st.floats(min_value=1, exclude_min=True).map(repr),
                     st.sampled_from(["nan", "inf", "-inf", "", "tenth", "10%"]))


@FUZZ
@given(flag=st.sampled_from(INT_FLAGS), value=_not_a_positive_int())
def test_bad_counts_are_refused_before_any_work(job: tuple[list[str], Path], flag: str, value: str) -> None:
    command, finished = job
    out = finished.parent / "never written"
    assert_refused([*command, "--out", str(out), f"{flag}={value}"], finished, out, says=flag)
    assert not out.exists()


def test_a_count_of_two_dashes_is_refused(job: tuple[list[str], Path], tmp_path: Path) -> None:
    command, finished = job
    out = tmp_path / "never written"
    assert_refused([*command, "--out", str(out), "--report-latents=--"], finished, out, says="--report-latents")


@FUZZ
@given(value=_not_a_coverage())
def test_bad_min_coverage_is_refused_before_any_work(job: tuple[list[str], Path], value: str) -> None:
    command, finished = job
    out = finished.parent / "never written"
    assert_refused([*command, "--out", str(out), f"--min-coverage={value}"], finished, out, says="coverage")
    assert not out.exists()


def _json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _npy(path: Path, change: Callable[[np.ndarray], Any]) -> None:
    array = np.load(path)
    changed = change(array.copy())
    np.save(path, changed, allow_pickle=True)


def _statistics(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        arrays = load_file(str(root / "latent_statistics.safetensors"))
        change(arrays)
        save_file(arrays, str(root / "latent_statistics.safetensors"))

    return damage


def _set_first(array: np.ndarray, value: int) -> None:
    array.flat[0] = value


def _swap_first_rise(indptr: np.ndarray) -> np.ndarray:
    rise = int(np.flatnonzero(np.diff(indptr) > 0)[0])
    indptr[rise + 1] = indptr[rise] - 1
    return indptr


def _reverse_first_long_column(root: Path) -> None:
    indptr = np.load(root / "latent_indptr.npy")
    latent = int(np.flatnonzero(np.diff(indptr) > 1)[0])
    _npy(root / "latent_rows.npy", lambda rows: np.concatenate(
        [rows[: indptr[latent]], rows[indptr[latent] : indptr[latent + 1]][::-1], rows[indptr[latent + 1] :]]))


# Damage that a reader must notice, named so a failure says which. Each takes the folder's root.
STRUCTURED: dict[str, Callable[[Path], None]] = {
    "manifest format": lambda root: _json(root / "features.json", lambda m: m.update(format="traitlens.store")),
    "manifest version": lambda root: _json(root / "features.json", lambda m: m.update(version=1)),
    "manifest width": lambda root: _json(root / "features.json", lambda m: m.update(width=m["width"] + 1)),
    "manifest width text": lambda root: _json(root / "features.json", lambda m: m.update(width="48")),
    "manifest n_images": lambda root: _json(root / "features.json", lambda m: m.update(n_images=m["n_images"] - 1)),
    "manifest tokens": lambda root: _json(root / "features.json", lambda m: m.update(tokens="pixels")),
    "manifest tokens_per_image": lambda root: _json(root / "features.json", lambda m: m.update(tokens_per_image=7)),
    "manifest layout": lambda root: _json(root / "features.json", lambda m: m.update(layout={"grid_hw": "8x8"})),
    "manifest top_k": lambda root: _json(root / "features.json", lambda m: m.update(top_k=m["top_k"] + 1)),
    "manifest label_names": lambda root: _json(root / "features.json", lambda m: m.update(label_names=m["label_names"][1:])),
    "manifest class_names": lambda root: _json(root / "features.json", lambda m: m.update(class_names="sp00")),
    "manifest summary": lambda root: _json(root / "features.json", lambda m: m["summary"].pop("alive")),
    "manifest job": lambda root: _json(root / "features.json", lambda m: m["job"].update(top_k=3)),
    "manifest files": lambda root: _json(root / "features.json", lambda m: m.update(files=["latent_rows.npy"])),
    "manifest without sae": lambda root: _json(root / "features.json", lambda m: m.pop("sae")),
    "indptr dtype": lambda root: _npy(root / "latent_indptr.npy", lambda a: a.astype(np.int32)),
    "indptr 2-d": lambda root: _npy(root / "latent_indptr.npy", lambda a: a[:, None]),
    "indptr decreasing": lambda root: _npy(root / "latent_indptr.npy", _swap_first_rise),
    "indptr from 1": lambda root: _npy(root / "latent_indptr.npy", lambda a: a + 1),
    "indptr short": lambda root: _npy(root / "latent_indptr.npy", lambda a: a[:-1]),
    "indptr pickled": lambda root: _npy(root / "latent_indptr.npy", lambda a: np.array([{"x": 1}], dtype=object)),
    "rows float": lambda root: _npy(root / "latent_rows.npy", lambda a: a.astype(np.float64)),
    "rows beyond the store": lambda root: _npy(root / "latent_rows.npy", lambda a: a + 10**6),
    "rows out of order": _reverse_first_long_column,
    "values NaN": lambda root: _npy(root / "latent_values.npy", lambda a: np.where(np.arange(len(a)) == 0, np.nan, a)),
    "values short": lambda root: _npy(root / "latent_values.npy", lambda a: a[:-1]),
    "statistics missing array": _statistics(lambda s: s.__delitem__("label_ap_wl")),
    "statistics dtype": _statistics(lambda s: s.update(count_w=s["count_w"].astype(np.int32))),
    "statistics shape": _statistics(lambda s: s.update(class_ap_wc=s["class_ap_wc"][:, :-1].copy())),
    "statistics counts": _statistics(lambda s: s.update(count_w=s["count_w"] + 1)),
    "statistics top image": _statistics(lambda s: _set_first(s["top_images_wk"], 10**6)),
    "statistics top token": _statistics(lambda s: _set_first(s["top_tokens_wk"], -5)),
}
# (file, its bytes cut at this share, or replaced by bytes) for every file the readers open
READ_FILES = ("features.json", "latent_indptr.npy", "latent_rows.npy", "latent_values.npy", "latent_statistics.safetensors")


@pytest.mark.parametrize("damage", sorted(STRUCTURED))
def test_a_damaged_folder_is_refused(job: tuple[list[str], Path], damage: str) -> None:
    command, _ = job
    with features_copy(job) as copy:
        STRUCTURED[damage](copy)
        assert_refused([*command, "--out", str(copy)], copy)


@FUZZ
@given(name=st.sampled_from(READ_FILES), cut=st.floats(0, 0.99), garbage=st.one_of(st.none(), st.binary(max_size=64)))
def test_truncated_or_garbage_files_are_refused(job: tuple[list[str], Path], name: str, cut: float, garbage: bytes | None) -> None:
    command, _ = job
    with features_copy(job) as copy:
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(data[: int(cut * len(data))] if garbage is None else garbage)
        assert_refused([*command, "--out", str(copy)], copy)


def test_a_manifest_that_is_not_text_is_refused(job: tuple[list[str], Path]) -> None:
    command, _ = job
    with features_copy(job) as copy:
        (copy / "features.json").write_bytes(b"\xff\xfe{")
        assert_refused([*command, "--out", str(copy)], copy)


@pytest.mark.parametrize("name", ["../../outside.npy", "/etc/passwd", "report/../../outside.npy", "", "."])
def test_manifest_paths_stay_inside_the_folder(job: tuple[list[str], Path], name: str) -> None:
    command, _ = job
    with features_copy(job) as copy:
        shutil.copy(copy / "latent_rows.npy", copy.parent / "outside.npy")
        _json(copy / "features.json", lambda m: m["files"].update(rows=name))
        assert_refused([*command, "--out", str(copy)], copy, says="not inside")


def test_a_column_file_linked_from_outside_is_refused(job: tuple[list[str], Path]) -> None:
    command, _ = job
    with features_copy(job) as copy:
        shutil.move(copy / "latent_values.npy", copy.parent / "values.npy")
        (copy / "latent_values.npy").symlink_to(copy.parent / "values.npy")
        assert_refused([*command, "--out", str(copy)], copy, says="not inside")


def _unfinished(copy: Path) -> None:
    """The folder as a run killed after writing its job file leaves it."""
    for path in list(copy.iterdir()):
        if path.name not in ("job.json", "traitlens-output.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("damage", ["job garbage", "job foreign", "job other settings", "chunk garbage", "chunk latents"])
def test_a_damaged_unfinished_folder_is_refused_before_more_work(job: tuple[list[str], Path], damage: str) -> None:
    command, _ = job
    with features_copy(job) as copy:
        _unfinished(copy)
        chunk = copy / "chunks" / "00000.npz"
        chunk.parent.mkdir()
        if damage == "job garbage":
            (copy / "job.json").write_bytes(b"{\"format\": ")
        elif damage == "job foreign":
            _json(copy / "job.json", lambda j: j.update(format="traitlens.train.job"))
        elif damage == "job other settings":
            _json(copy / "job.json", lambda j: j.update(chunk_tokens=301))
        elif damage == "chunk garbage":
            chunk.write_bytes(b"PK\x03\x04 not a zip")
        else:
            np.savez(chunk, rows=np.arange(3), cols=np.array([0, 1, 10**6]), values=np.ones(3, np.float32), n_nonfinite=np.int64(0))
        assert_refused([*command, "--out", str(copy)], copy)


def test_output_folders_that_are_not_its_own_are_never_touched(job: tuple[list[str], Path], tmp_path: Path) -> None:
    command, _ = job
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_refused([*command, "--out", str(mine)], mine, says="holds no traitlens output")
    assert_refused([*command, "--out", str(mine), "--overwrite"], mine, says="holds no traitlens output")
    other = tmp_path / "other"
    other.mkdir()
    (other / "traitlens-output.json").write_text(json.dumps({"format": "traitlens-output", "command": "explain"}))
    (other / "summary.json").write_text("{}")
    assert_refused([*command, "--out", str(other), "--overwrite"], other, says="holds the output of traitlens explain")
    (tmp_path / "file").write_text("a file")
    assert_refused([*command, "--out", str(tmp_path / "file")], tmp_path / "file", says="is a file")
    assert_refused([*command, "--out", str(tmp_path / "file" / "features")], tmp_path / "file", says="cannot be created")


def test_its_own_folder_is_resumed_refused_for_another_job_or_overwritten(job: tuple[list[str], Path]) -> None:
    command, _ = job
    with features_copy(job) as copy:
        before = snapshot(copy)
        code, _, err = run_cli([*command, "--out", str(copy), "--no-report"])
        assert code == 0 and snapshot(copy) == before, err  # a finished folder of the same job, as it was
        assert_refused([*command, "--out", str(copy), "--top-k", "5"], copy, says="another job (different top_k)")
        (copy / "traitlens-output.json").unlink()  # a folder from before the owner file: its job file says whose it is
        assert_refused([*command, "--out", str(copy), "--top-k", "5"], copy, says="another job (different top_k)")
        code, _, err = run_cli([*command, "--out", str(copy), "--top-k", "5", "--overwrite", "--no-report"])
        assert code == 0, err
        assert json.loads((copy / "features.json").read_text())["top_k"] == 5 and not (copy / "report").exists()
