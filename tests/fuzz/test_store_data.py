"""Bad stores, bad image sources and bad extract flags: each one line on stderr, exit 2, and every
file left as it was, for ``traitlens inspect``, ``traitlens extract`` and ``traitlens train``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz.harness import assert_refused, run_cli
from tests.store.conftest import TINY_VIT, make_class_folder, write_image

FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LAYER = "blocks.0"
ACTS = f"layers/{LAYER}/acts_00000.npy"
LABELS = f"layers/{LAYER}/patch_labels_00000.npy"
STATS = f"layers/{LAYER}/stats.json"


def _segmentation_folder(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "names.txt").write_text("background\nwing\n")
    for i in range(4):
        write_image(root / "images" / f"s{i}.png", i, size=(32, 32))
        mask = np.zeros((32, 32), np.uint8)
        mask[:16, 16:] = 1
        Image.fromarray(mask).save(root / "annotations" / f"s{i}.png")
    return root


def _extract_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--model", TINY_VIT, "--random-init", "--data", str(data), "--layers", "0,1", "--out", str(out),
            "--tokens", "all", "--batch-size", "2", "--images-per-shard", "2", *extra]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image source, finished store): 4 segmentation images, 2 layers of 2 shards, patch labels."""
    root = tmp_path_factory.mktemp("pristine")
    data = _segmentation_folder(root / "seg")
    code, _, err = run_cli(_extract_args(data, root / "acts"))
    assert code == 0, err
    return data, root / "acts"


@contextmanager
def store_copy(pristine: tuple[Path, Path]) -> Iterator[Path]:
    """A fresh copy of the pristine store (one per hypothesis example, so none sees another's damage)."""
    with tempfile.TemporaryDirectory() as temp:
        copy = Path(temp) / "acts"
        shutil.copytree(pristine[1], copy)
        yield copy


def _inspect(store: Path) -> list[str]:
    return ["inspect", "--acts", str(store)]


def _train(store: Path) -> list[str]:
    return ["train", "--acts", str(store), "--layer", "0", "--n-tokens", "64", "--batch-size", "8", "--width", "16",
            "--k", "4", "--out", str(store.parent / "sae")]


def _manifest(store: Path) -> dict[str, Any]:
    return json.loads((store / "manifest.json").read_text())


def _set(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]  # type: ignore[index]
    data[path[-1]] = value  # type: ignore[index]


def _get(data: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _write_manifest(store: Path, manifest: dict[str, Any]) -> None:
    (store / "manifest.json").write_text(json.dumps(manifest))


def test_the_pristine_store_is_read_and_trained_on(pristine: tuple[Path, Path]) -> None:
    """The control: every refusal below comes from the damage, not from the commands."""
    with store_copy(pristine) as store:
        code, out, err = run_cli(_inspect(store))
        assert code == 0 and "layer blocks.0: width 32" in out, err
        code, _, err = run_cli(_train(store))
        assert code == 0, err


# -- paths inside a store name only the store's own files ---------------------------------------


@pytest.mark.parametrize("command", [_inspect, _train])
@pytest.mark.parametrize("escape", ["../other/acts_00000.npy", "layers/../../other/acts_00000.npy", "absolute", "symlink"])
def test_a_shard_outside_the_store_is_refused(pristine: tuple[Path, Path], command: Callable[[Path], list[str]],
                                              escape: str) -> None:
    """The regression: a valid array of the same shape elsewhere was silently trained on."""
    with store_copy(pristine) as store:
        outside = store.parent / "other"
        outside.mkdir()
        shutil.copy(store / ACTS, outside / "acts_00000.npy")
        manifest = _manifest(store)
        if escape == "symlink":
            (store / ACTS).unlink()
            (store / ACTS).symlink_to(outside / "acts_00000.npy")
        else:
            file = str(outside / "acts_00000.npy") if escape == "absolute" else escape
            _set(manifest, ("layers", LAYER, "shards", 0, "file"), file)
            _write_manifest(store, manifest)
        says = "absolute path" if escape == "absolute" else "outside the store"
        assert_refused(command(store), store, outside, says=says)


def test_patch_labels_and_statistics_outside_the_store_are_refused(pristine: tuple[Path, Path]) -> None:
    with store_copy(pristine) as store:
        manifest = _manifest(store)
        _set(manifest, ("layers", LAYER, "patch_labels", 1), "../../../etc/passwd")
        _write_manifest(store, manifest)
        assert_refused(_inspect(store), store, says="outside the store")
    with store_copy(pristine) as store:
        manifest = _manifest(store)
        manifest["layers"]["../../x"] = manifest["layers"].pop(LAYER)
        _write_manifest(store, manifest)
        assert_refused(_inspect(store), store, says="outside the store")


# -- the manifest ----------------------------------------------------------------------------------

# Fields where any other JSON value is wrong, or contradicts the shards (others, such as a model
# spec, may hold any string).
STRICT_FIELDS: list[tuple[str | int, ...]] = [
    ("format",), ("version",), ("tokens",), ("dtype",), ("n_images",), ("n_skipped",), ("layers",), ("images",),
    ("skipped",), ("model",), ("dataset",), ("layers", LAYER), ("layers", LAYER, "width"),
    ("layers", LAYER, "tokens_per_image"), ("layers", LAYER, "n_tokens"), ("layers", LAYER, "layout"),
    ("layers", LAYER, "layout", "n_prefix"), ("layers", LAYER, "shards"), ("layers", LAYER, "shards", 0),
    ("layers", LAYER, "shards", 0, "rows"), ("layers", LAYER, "shards", 1, "file"), ("images", 0),
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(path=st.sampled_from(STRICT_FIELDS), value=JSON_VALUES)
def test_a_manifest_field_with_a_wrong_value_is_refused(pristine: tuple[Path, Path], path: tuple[str | int, ...],
                                                        value: Any) -> None:
    with store_copy(pristine) as store:
        manifest = _manifest(store)
        original = _get(manifest, path)
        assume(json.dumps(value) != json.dumps(original))
        _set(manifest, path, value)
        _write_manifest(store, manifest)
        assert_refused(_inspect(store), store)


@pytest.mark.parametrize(("field", "value", "says"), [
    (("layers",), {}, "no layers"),
    (("layers", LAYER, "width"), "abc", "width"),
    (("layers", LAYER, "tokens_per_image"), 0, "tokens_per_image"),
    (("layers", LAYER, "tokens_per_image"), -5, "tokens_per_image"),
    (("dtype",), "int64", "dtype"),
    (("version",), 3, "version 3"),
    (("n_images",), 0, "n_images"),
    (("layers", LAYER, "width"), True, "width"),
])
def test_the_reported_manifest_damage_is_named(pristine: tuple[Path, Path], field: tuple[str, ...], value: Any,
                                               says: str) -> None:
    with store_copy(pristine) as store:
        manifest = _manifest(store)
        _set(manifest, field, value)
        _write_manifest(store, manifest)
        assert_refused(_inspect(store), store, says=says)
        assert_refused(_train(store), store, says=says)


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe{not utf-8", "damaged"), (b"", "damaged"), (b'{"format": "traitlens.activations", ', "damaged"),
    (b"[]", "expected a JSON object"), (b"[" * 100_000 + b"]" * 100_000, "damaged"), (b'{"n_images": NaN}', "damaged"),
])
def test_a_manifest_that_is_not_a_json_object_is_refused(pristine: tuple[Path, Path], content: bytes, says: str) -> None:
    with store_copy(pristine) as store:
        (store / "manifest.json").write_bytes(content)
        assert_refused(_inspect(store), store, says=says)


# -- shards and patch labels -------------------------------------------------------------------------


class _Planted:
    """Unpickling this would create ``path``: proof that a store is never unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=True)


@pytest.mark.parametrize("command", [_inspect, _train])
@pytest.mark.parametrize(("damage", "says"), [
    (lambda a: a.astype(np.int64), "int64"),  # read as float16 and trained on, before
    (lambda a: a.astype(np.float32), "float32"),
    (lambda a: a.astype(">f2"), ">f2"),
    (lambda a: a[:-1], "shape"),
    (lambda a: np.concatenate([a, a[:1]]), "shape"),
    (lambda a: a[:, :-1], "shape"),
    (lambda a: a.reshape(-1), "shape"),
])
def test_a_shard_of_the_wrong_dtype_or_shape_is_refused(pristine: tuple[Path, Path], command: Callable[[Path], list[str]],
                                                        damage: Callable[[np.ndarray], np.ndarray], says: str) -> None:
    with store_copy(pristine) as store:
        _save(store / ACTS, damage(np.load(store / ACTS)))
        assert_refused(command(store), store, says=says)


def test_an_object_shard_is_refused_and_never_unpickled(pristine: tuple[Path, Path]) -> None:
    with store_copy(pristine) as store:
        planted = store.parent / "unpickled"
        _save(store / ACTS, np.array([[_Planted(planted)] * 32] * 10, dtype=object))
        assert_refused(_inspect(store), store, says="object")
        assert_refused(_train(store), store, says="object")
        assert not planted.exists()


@FUZZ
@given(keep=st.floats(0.0, 0.999))
def test_a_truncated_shard_is_refused(pristine: tuple[Path, Path], keep: float) -> None:
    with store_copy(pristine) as store:
        data = (store / ACTS).read_bytes()
        (store / ACTS).write_bytes(data[: int(len(data) * keep)])
        assert_refused(_inspect(store), store)


@pytest.mark.parametrize(("damage", "says"), [
    ("missing", "missing"), ("folder", "cannot read"), ("garbage", "not a .npy"),
])
def test_a_missing_or_unreadable_shard_is_refused(pristine: tuple[Path, Path], damage: str, says: str) -> None:
    with store_copy(pristine) as store:
        (store / ACTS).unlink()
        if damage == "folder":
            (store / ACTS).mkdir()
        elif damage == "garbage":
            (store / ACTS).write_bytes(b"PK\x03\x04 not numpy at all")
        assert_refused(_inspect(store), store, says=says)
        assert_refused(_train(store), store, says=says)


@pytest.mark.parametrize(("damage", "says"), [
    (None, "missing"),
    (lambda a: a.astype(np.float32), "float32"),
    (lambda a: a.astype(np.int64), "int64"),
    (lambda a: a[:, :-1], "shape"),
    (lambda a: a[:-1], "shape"),
    (lambda a: a - 5, "holds -5"),
])
def test_damaged_patch_labels_are_refused(pristine: tuple[Path, Path], damage: Callable[[np.ndarray], np.ndarray] | None,
                                          says: str) -> None:
    with store_copy(pristine) as store:
        if damage is None:
            (store / LABELS).unlink()
        else:
            _save(store / LABELS, damage(np.load(store / LABELS)))
        assert_refused(_inspect(store), store, says=says)


# -- statistics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [_inspect, _train])
@pytest.mark.parametrize(("damage", "says"), [
    (None, "missing"),
    (b"\x80garbage", "damaged"),
    (b"[1, 2]", "expected a JSON object"),
    (lambda s: {**s, "mean_d": s["mean_d"][:-1]}, "mean_d"),
    (lambda s: {**s, "std_d": [-1.0] * len(s["std_d"])}, "std_d"),
    (lambda s: {**s, "mean_norm": "big"}, "mean_norm"),
    (lambda s: {**s, "count": s["count"] + 1}, "count"),
    (lambda s: {key: value for key, value in s.items() if key != "n_nonfinite"}, "n_nonfinite"),
])
def test_damaged_statistics_are_refused(pristine: tuple[Path, Path], command: Callable[[Path], list[str]],
                                        damage: Any, says: str) -> None:
    with store_copy(pristine) as store:
        if damage is None:
            (store / STATS).unlink()
        elif isinstance(damage, bytes):
            (store / STATS).write_bytes(damage)
        else:
            (store / STATS).write_text(json.dumps(damage(json.loads((store / STATS).read_text()))))
        assert_refused(command(store), store, says=says)


@FUZZ
@given(key=st.sampled_from(["count", "mean_d", "std_d", "n_nonfinite"]), value=JSON_VALUES)
def test_a_statistics_field_with_a_wrong_value_is_refused(pristine: tuple[Path, Path], key: str, value: Any) -> None:
    with store_copy(pristine) as store:
        stats = json.loads((store / STATS).read_text())
        assume(json.dumps(value) != json.dumps(stats[key]))
        stats[key] = value
        (store / STATS).write_text(json.dumps(stats))
        assert_refused(_inspect(store), store)


# -- resuming an extraction ----------------------------------------------------------------------------


@contextmanager
def unfinished_copy(pristine: tuple[Path, Path]) -> Iterator[Path]:
    """The store as a killed run leaves it once every shard is written: no statistics, no manifest."""
    with store_copy(pristine) as store:
        (store / "manifest.json").unlink()
        for stats in store.glob("layers/*/stats.json"):
            stats.unlink()
        yield store


def test_an_unfinished_store_is_resumed_to_the_same_bytes(pristine: tuple[Path, Path]) -> None:
    with unfinished_copy(pristine) as store:
        code, _, err = run_cli(_extract_args(pristine[0], store))
        assert code == 0, err
        assert (store / "manifest.json").read_bytes() == (pristine[1] / "manifest.json").read_bytes()
        assert (store / STATS).read_bytes() == (pristine[1] / STATS).read_bytes()


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe", "damaged"), (b"[1]", "expected a JSON object"), (b'{"model": "other"}', "another job"),
])
def test_a_damaged_job_file_is_refused_on_resume(pristine: tuple[Path, Path], content: bytes, says: str) -> None:
    with unfinished_copy(pristine) as store:
        (store / "job.json").write_bytes(content)
        (store / "layers" / "leftover.tmp").write_bytes(b"half")  # what a kill leaves: kept until the job matches
        assert_refused(_extract_args(pristine[0], store), store, says=says)


RECORD_DAMAGE: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda r: {**r, "images": []}, "once"),
    (lambda r: {**r, "images": [*r["images"], r["images"][-1]]}, "once"),
    (lambda r: {**r, "images": list(reversed(r["images"]))}, "once"),
    (lambda r: {**r, "index": 7}, "describes shard 7"),
    (lambda r: {**r, "layers": {}}, "missing"),
    (lambda r: _with(r, ("layers", LAYER, "rows"), 3), "rows"),
    (lambda r: _with(r, ("layers", LAYER, "stats", "count"), -1), "count"),
    (lambda r: _with(r, ("layers", LAYER, "stats", "sum_d"), [1.0]), "sum_d"),
    (lambda r: "garbage", "expected a JSON object"),
]


def _with(record: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(record))
    _set(copy, path, value)
    return copy


@pytest.mark.parametrize(("damage", "says"), RECORD_DAMAGE)
def test_a_damaged_shard_record_is_refused_on_resume(pristine: tuple[Path, Path], damage: Callable[[dict[str, Any]], Any],
                                                     says: str) -> None:
    with unfinished_copy(pristine) as store:
        record = store / "shards" / "00000.json"
        record.write_text(json.dumps(damage(json.loads(record.read_text()))))
        line = assert_refused(_extract_args(pristine[0], store), store, says=says)
        assert "delete" in line and not (store / "manifest.json").exists()


def test_a_damaged_shard_of_an_unfinished_store_is_refused_on_resume(pristine: tuple[Path, Path]) -> None:
    with unfinished_copy(pristine) as store:
        _save(store / ACTS, np.load(store / ACTS).astype(np.int64))
        assert_refused(_extract_args(pristine[0], store), store, says="int64")
        assert not (store / "manifest.json").exists()


# -- extract's flags, source and output folder ----------------------------------------------------------


@FUZZ
@given(flag=st.sampled_from(["--batch-size", "--images-per-shard"]),
       value=st.text(max_size=6) | st.integers(-10, 0).map(str) | st.sampled_from(["abc", "1.5", "nan", "inf", "1e3", " "]))
def test_a_bad_count_flag_is_refused_at_parse_time(tmp_path: Path, flag: str, value: str) -> None:
    try:
        assume(int(value) < 1)
    except ValueError:
        pass
    out = tmp_path / "acts"
    argv = _extract_args(tmp_path / "no-images-needed", out)
    argv[argv.index(flag) + 1] = value
    assert_refused(argv, tmp_path)
    assert not out.exists()


@pytest.mark.parametrize("layers", ["", ",", "0,,1", "0,"])
def test_an_empty_layer_name_is_refused_at_parse_time(tmp_path: Path, layers: str) -> None:
    argv = _extract_args(tmp_path, tmp_path / "acts")
    argv[argv.index("--layers") + 1] = layers
    assert_refused(argv, tmp_path, says="--layers")
    assert not (tmp_path / "acts").exists()


def test_a_source_without_one_readable_image_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "images"
    for name in ("a", "b", "c"):
        (data / "ant").mkdir(parents=True, exist_ok=True)
        (data / "ant" / f"{name}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert_refused(_extract_args(data, tmp_path / "acts"), data, says="none of the 3 images")
    assert not (tmp_path / "acts" / "manifest.json").exists()


@pytest.mark.parametrize("occupant", ["notes", "other-command", "file"])
def test_extract_never_writes_into_a_folder_it_does_not_own(tmp_path: Path, occupant: str) -> None:
    data = make_class_folder(tmp_path / "images", per_class=1)
    out = tmp_path / "acts"
    if occupant == "file":
        out.write_text("my notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        if occupant == "other-command":
            (out / "traitlens-output.json").write_text(json.dumps({"format": "traitlens-output", "command": "explain"}))
    assert_refused(_extract_args(data, out), out, says=str(out))


def test_extract_refuses_a_different_job_in_its_own_folder(pristine: tuple[Path, Path]) -> None:
    with store_copy(pristine) as store:
        argv = _extract_args(pristine[0], store)
        argv[argv.index("--layers") + 1] = "0"
        assert_refused(argv, store, says="another job")
