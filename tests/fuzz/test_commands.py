"""Bad input to steer, attribute, probe, the specimens commands and the demo (issue 12): one line,
exit 2, and every file that was there before left byte for byte as it was."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import assert_refused, run_cli
from tests.resume import file_bytes
from traitlens.cli_args import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_interval,
)
from traitlens.heads.linear_head import LinearHead, save_head
from traitlens.interventions.edits import InterventionError, LatentEdit
from traitlens.output_folder import OWNER_FILE, claim_output_folder
from traitlens.specimens.benchmark import read_benchmark

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODEL = ["--model", "traitlens:specimens-vit"]


@pytest.fixture(scope="module")
def acts(specimens_with_sae: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """blocks.1 (all tokens) of the embedded model on the 24 specimens."""
    data, _ = specimens_with_sae
    out = tmp_path_factory.mktemp("commands") / "acts"
    code, _, err = run_cli(["extract", *MODEL, "--data", str(data), "--layers", "blocks.1", "--tokens", "all", "--out", str(out)])
    assert code == 0, err
    return out


def _predictions(data: Path, path: Path) -> Path:
    """A CSV in which every benchmark image is predicted right and stays so."""
    benchmark = read_benchmark(data)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "before", "after"])
        writer.writerows([source, species, species] for source, species in benchmark.image_species.items())
    return path


def _heatmaps(data: Path, folder: Path) -> Path:
    for source in read_benchmark(data).image_species:
        path = folder / Path(source).relative_to("images").with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ones((96, 96), np.float32))
    return folder


def _folder_commands(data: Path, sae: Path, acts: Path, inputs: Path) -> dict[str, list[str]]:
    """Each command that writes a folder of results (not a long job of its own artifact), ready to be
    given ``--out``; ``inputs`` holds the files they read."""
    return {
        "steer": ["steer", *MODEL, "--sae", str(sae), "--data", str(data), "--edit", "3=zero", "--max-images", "2"],
        "attribute": ["attribute", *MODEL, "--sae", str(sae), "--data", str(data), "--target", "sp01", "--refs", "sp00",
                      "--max-images", "1"],
        "probe": ["probe", "--acts", str(acts), "--max-iter", "5"],
        "specimens score discovery": ["specimens", "score", "discovery", "--acts", str(acts), "--data", str(data),
                                      "--pca-components", "2", "--kmeans-clusters", "2"],
        "specimens score localization": ["specimens", "score", "localization", "--heatmaps", str(inputs / "maps"),
                                         "--data", str(data)],
        "specimens score flips": ["specimens", "score", "flips", "--predictions", str(inputs / "predictions.csv"),
                                  "--data", str(data)],
        "specimens score suppression": ["specimens", "score", "suppression", *MODEL, "--sae", str(sae), "--acts", str(acts),
                                        "--data", str(data), "--n-latents", "1", "--n-random", "1"],
    }


@pytest.fixture(scope="module")
def commands(specimens_with_sae: tuple[Path, Path], acts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    data, sae = specimens_with_sae
    inputs = tmp_path_factory.mktemp("inputs")
    _predictions(data, inputs / "predictions.csv")
    _heatmaps(data, inputs / "maps")
    return _folder_commands(data, sae, acts, inputs)


def _watched(specimens_with_sae: tuple[Path, Path], acts: Path) -> list[Path]:
    return [*specimens_with_sae, acts]


# --- numbers, checked when the command line is read ----------------------------------------------

# (command, option, the option's type); the command's other arguments never get read
NUMERIC_OPTIONS: list[tuple[list[str], str, Callable[[str], Any]]] = [
    (["steer", *MODEL, "--sae", "s", "--data", "d", "--edit", "1=zero"], "--batch-size", positive_int),
    (["steer", *MODEL, "--sae", "s", "--data", "d", "--edit", "1=zero"], "--max-images", positive_int),
    (["attribute", *MODEL, "--sae", "s", "--data", "d", "--target", "a", "--refs", "b"], "--gamma", non_negative_float),
    (["attribute", *MODEL, "--sae", "s", "--data", "d", "--target", "a", "--refs", "b"], "--top", positive_int),
    (["probe", "--acts", "a"], "--val-fraction", fraction),
    (["probe", "--acts", "a"], "--l2", non_negative_float),
    (["probe", "--acts", "a"], "--max-iter", positive_int),
    (["probe", "--acts", "a"], "--seed", non_negative_int),
    (["specimens", "generate", "--seed", "1"], "--n-images", positive_int),
    (["specimens", "generate", "--n-images", "1"], "--seed", non_negative_int),
    (["specimens", "generate", "--n-images", "1", "--seed", "1"], "--size", positive_int),
    (["specimens", "generate", "--n-images", "1", "--seed", "1"], "--workers", positive_int),
    (["specimens", "train-model", "--data", "d"], "--epochs", positive_int),
    (["specimens", "train-model", "--data", "d"], "--batch-size", positive_int),
    (["specimens", "train-model", "--data", "d"], "--lr", positive_float),
    (["specimens", "train-model", "--data", "d"], "--val-fraction", fraction),
    (["specimens", "train-model", "--data", "d"], "--embed-dim", positive_int),
    (["specimens", "train-model", "--data", "d"], "--mlp-ratio", positive_float),
    (["specimens", "score", "discovery", "--acts", "a", "--data", "d"], "--min-coverage", unit_interval),
    (["specimens", "score", "discovery", "--acts", "a", "--data", "d"], "--pca-components", positive_int),
    (["specimens", "score", "localization", "--heatmaps", "h", "--data", "d"], "--tolerance", non_negative_int),
    (["specimens", "score", "suppression", *MODEL, "--sae", "s", "--acts", "a", "--data", "d"], "--n-latents", positive_int),
    (["specimens", "score", "suppression", *MODEL, "--sae", "s", "--acts", "a", "--data", "d"], "--n-random", positive_int),
    (["demo"], "--n-images", positive_int),
    (["demo"], "--seed", non_negative_int),
]
_NUMBER_TEXT = st.one_of(st.integers(-10**30, 10**30).map(str), st.floats().map(repr), st.text(max_size=12),
                         st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "1_000", " ", "2.", "1e-400", "٣"]))


def _rejects(kind: Callable[[str], Any], text: str) -> bool:
    try:
        kind(text)
    except argparse.ArgumentTypeError:
        return True
    return False


@FUZZ
@given(option=st.sampled_from(NUMERIC_OPTIONS), text=_NUMBER_TEXT)
def test_a_bad_number_is_refused_before_anything_is_read(option: tuple[list[str], str, Callable[[str], Any]], text: str,
                                                        tmp_path: Path) -> None:
    command, name, kind = option
    assume(_rejects(kind, text))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "notes.txt").write_text("the user's")
    assert_refused([*command, f"{name}={text}", "--out", str(out)], out, says=name)


@pytest.mark.parametrize(("argv", "says"), [
    (["specimens", "generate", "--n-images", "4", "--seed", "0", "--size", "16"], "between 32 and 1024"),
    (["specimens", "generate", "--n-images", str(10**8 + 1), "--seed", "0"], "between 1 and"),
    (["specimens", "train-model", "--embed-dim", "30", "--num-heads", "4"], "not a multiple of the number of heads"),
    (["specimens", "train-model", "--img-size", "30", "--patch-size", "8"], "not a multiple of patch size"),
    (["demo", "--n-images", "15"], "--n-images"),
])
def test_numbers_that_do_not_fit_together_are_refused_before_any_work(argv: list[str], says: str, tmp_path: Path,
                                                                      specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    extra = ["--data", str(data / "images")] if argv[:2] == ["specimens", "train-model"] else []
    assert_refused([*argv, *extra, "--out", str(tmp_path / "out")], data, says=says)
    assert not (tmp_path / "out").exists()


def _edit_that_runs(text: str) -> bool:
    """Whether ``text`` is an edit the 96-latent SAE can make without observed maxima."""
    try:
        edit = LatentEdit.parse(text)
    except InterventionError:
        return False
    return edit.latent < 96 and edit.op != "max"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.one_of(st.text(max_size=12), st.integers(96, 10**40).map(lambda latent: f"{latent}=zero"),
                      st.sampled_from(["3=1e999", "3*nan", "3=zeromax", "-1=zero", "3=inf", "3", "=3", "3==1", "9" * 5000 + "=1"])))
def test_a_bad_edit_is_refused(specimens_with_sae: tuple[Path, Path], edit: str) -> None:
    """Malformed, non-finite, or naming a latent the SAE (96 wide) does not have."""
    data, sae = specimens_with_sae
    assume(not _edit_that_runs(edit))
    assert_refused(["steer", *MODEL, "--sae", str(sae), "--data", str(data), f"--edit={edit}"], data, sae)


# --- where output goes -----------------------------------------------------------------------------

# files a user may well have, named as the commands name theirs
USER_FILES = ("head.safetensors", "head.json", "summary.json", "effect.json", "predictions.csv", "attribution.json",
              "flips.json", "discovery.md")
ONE_SHOT_NAMES = ["probe", "specimens score discovery", "specimens score localization", "specimens score flips",
                  "specimens score suppression"]
RESUMABLE_NAMES = ["steer", "attribute"]
RESULT_FILES = {"steer": ["effect.json", "predictions.csv"], "attribute": ["attribution.json", "attribution.md"]}
COMMAND_NAMES = [*RESUMABLE_NAMES, *ONE_SHOT_NAMES]


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in USER_FILES:
        (path / name).write_bytes(f"the user's own {name}".encode())
    return path


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_a_folder_of_the_users_is_never_touched(name: str, commands: dict[str, list[str]], tmp_path: Path,
                                                specimens_with_sae: tuple[Path, Path], acts: Path) -> None:
    mine = _user_folder(tmp_path / "mine")
    for overwrite in ([], ["--overwrite"]):
        assert_refused([*commands[name], "--out", str(mine), *overwrite], mine, *_watched(specimens_with_sae, acts),
                       says="not empty and holds no traitlens output")


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_another_commands_output_is_never_touched(name: str, commands: dict[str, list[str]], tmp_path: Path) -> None:
    other = "specimens score flips" if name != "specimens score flips" else "steer"
    claim_output_folder(tmp_path / "other", other)
    (tmp_path / "other" / "result.json").write_text("{}")
    assert_refused([*commands[name], "--out", str(tmp_path / "other"), "--overwrite"], tmp_path / "other",
                   says=f"holds the output of traitlens {other}")


@pytest.mark.parametrize("name", ONE_SHOT_NAMES)
def test_an_earlier_result_is_kept_unless_overwrite(name: str, commands: dict[str, list[str]], tmp_path: Path,
                                                    specimens_with_sae: tuple[Path, Path], acts: Path) -> None:
    out = tmp_path / "out"
    claim_output_folder(out, name)
    (out / "result.json").write_text('{"an": "earlier result"}')
    assert_refused([*commands[name], "--out", str(out)], out, *_watched(specimens_with_sae, acts), says="pass --overwrite")


@pytest.mark.parametrize("name", RESUMABLE_NAMES)
def test_a_finished_result_is_kept_and_another_job_needs_overwrite(name: str, commands: dict[str, list[str]],
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli([*commands[name], "--out", str(out)])
    assert code == 0, err
    finished = file_bytes(out)
    assert sorted(finished) == sorted([OWNER_FILE, *RESULT_FILES[name]])  # no progress files left
    code, _, err = run_cli([*commands[name], "--out", str(out)])
    assert code == 0 and file_bytes(out) == finished, err
    assert_refused([*commands[name], "--out", str(out), "--batch-size", "3"], out, says="another job (different batch_size)")
    code, _, err = run_cli([*commands[name], "--out", str(out), "--batch-size", "3", "--overwrite"])
    assert code == 0, err


@pytest.mark.parametrize("name", ["probe", "specimens score flips", "specimens score localization"])
def test_overwrite_replaces_the_commands_own_result(name: str, commands: dict[str, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli([*commands[name], "--out", str(out)])
    assert code == 0, err
    (out / "stale.txt").write_text("left by the earlier run")
    assert_refused([*commands[name], "--out", str(out)], out, says="already holds a traitlens")
    code, _, err = run_cli([*commands[name], "--out", str(out), "--overwrite"])
    assert code == 0, err
    assert not (out / "stale.txt").exists()


def test_resumable_commands_refuse_a_folder_of_the_users(specimens_with_sae: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = specimens_with_sae
    mine = _user_folder(tmp_path / "mine")
    for argv in (["specimens", "generate", "--n-images", "4", "--seed", "0"], ["specimens", "train-model", "--data", str(data / "images")],
                 ["demo", "--n-images", "16"]):
        for overwrite in ([], ["--overwrite"]):
            assert_refused([*argv, "--out", str(mine), *overwrite], mine, data, says="not empty and holds no traitlens output")


def test_accuracy_never_replaces_a_file_without_overwrite(specimens_with_sae: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = specimens_with_sae
    (tmp_path / "result.json").write_text("the user's")
    (tmp_path / "notes").write_text("the user's")
    argv = ["specimens", "accuracy", *MODEL, "--data", str(data / "images"), "--out"]
    # the file form of --out (deprecated: two lines) refuses an existing file, and so does the folder form
    code, _, err = run_cli([*argv, str(tmp_path / "result.json")])
    assert code == 2 and "already exists" in err and (tmp_path / "result.json").read_text() == "the user's"
    assert_refused([*argv, str(tmp_path / "notes")], tmp_path, says="is a file")
    code, _, err = run_cli([*argv, str(tmp_path / "acc")])
    assert code == 0, err
    assert json.loads((tmp_path / "acc" / "accuracy.json").read_text())["n_images"] == 24
    assert_refused([*argv, str(tmp_path / "acc")], tmp_path, says="--overwrite")


# --- damaged files ---------------------------------------------------------------------------------

_NOT_A_NAME = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_NOT_A_NUMBER = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2))
_ANY_TEXT = st.text(max_size=20)


def _pointer(data: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    """The container and the key of ``path`` inside ``data``."""
    for key in path[:-1]:
        data = data[key]
    return data, path[-1]


# (a place in traits.json, values that are never right there); None deletes the field
TRAITS_DAMAGE: list[tuple[tuple[Any, ...], st.SearchStrategy[Any]]] = [
    (("format",), _ANY_TEXT.filter(lambda text: text != "traitlens.specimens")),
    (("version",), st.one_of(st.integers().filter(lambda v: v != 1), _NOT_A_NUMBER)),
    (("n",), st.one_of(st.integers().filter(lambda v: v != 24), _NOT_A_NUMBER)),
    (("traits", 0, "kind"), _ANY_TEXT.filter(lambda text: text not in ("presence", "color", "shape"))),
    (("traits", 0, "label"), st.one_of(st.integers(max_value=1), st.integers(min_value=256), st.just(3), _NOT_A_NUMBER)),
    (("traits", 0, "values"), st.one_of(_NOT_A_NAME, st.lists(_ANY_TEXT, max_size=1))),
    (("traits", 1, "name"), st.one_of(_NOT_A_NAME, st.sampled_from(["", "crest"]))),
    (("species", 0, "plan"), _ANY_TEXT.filter(lambda text: text not in ("butterfly", "dragonfly"))),
    (("species", 0, "name"), st.one_of(_NOT_A_NAME, st.just("sp01"))),
    (("species", 0, "traits", "crest"), _ANY_TEXT.filter(lambda text: text not in ("none", "crest"))),
    (("lookalikes", 0, "trait"), _ANY_TEXT.filter(lambda text: text not in
                                                  ("crest", "antenna", "collar", "wing_band", "wing_tip", "wing_spots",
                                                   "body_texture", "tail"))),
    (("lookalikes", 0, "a"), _ANY_TEXT.filter(lambda text: not text.startswith("sp"))),
    (("images", 0, "source"), st.one_of(_NOT_A_NAME, st.sampled_from(["../../outside.png", "/etc/passwd", "images/../x.png",
                                                                       "images/sp01/00000001.png", ""]))),
    (("images", 0, "species"), _ANY_TEXT.filter(lambda text: not text.startswith("sp"))),
    (("images", 0, "occluded_fraction"), st.one_of(st.floats(min_value=1.01), st.floats(max_value=-0.01), _NOT_A_NUMBER)),
    (("images", 0, "traits"), _NOT_A_NAME),
]


@FUZZ
@given(damage=st.sampled_from(TRAITS_DAMAGE), data=st.data())
def test_a_damaged_traits_file_is_refused(specimens_with_sae: tuple[Path, Path], damage: tuple[tuple[Any, ...], Any],
                                          data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    bench, _ = specimens_with_sae
    copy = tmp_path_factory.mktemp("damaged")
    shutil.copy(bench / "traits.json", copy / "traits.json")
    predictions = _predictions(bench, copy / "predictions.csv")
    description = json.loads((copy / "traits.json").read_text())
    path, values = damage
    container, key = _pointer(description, path)
    if data.draw(st.booleans(), "delete"):
        del container[key]
    else:
        container[key] = data.draw(values, "value")
    (copy / "traits.json").write_text(json.dumps(description))
    out = tmp_path_factory.mktemp("out") / "flips"
    assert_refused(["specimens", "score", "flips", "--predictions", str(predictions), "--data", str(copy), "--out", str(out)],
                   copy, says="benchmark")
    assert not (out / "flips.json").exists()


@FUZZ
@given(garbage=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode),
                         st.sampled_from([b"", b"[]", b"{}", b"null", b"[" * 100_000, b'{"format": "traitlens.specimens"}'])))
def test_a_traits_file_that_is_not_a_description_is_refused(specimens_with_sae: tuple[Path, Path], garbage: bytes,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    bench, _ = specimens_with_sae
    copy = tmp_path_factory.mktemp("garbage")
    (copy / "traits.json").write_bytes(garbage)
    predictions = _predictions(bench, copy / "predictions.csv")
    assert_refused(["specimens", "score", "flips", "--predictions", str(predictions), "--data", str(copy),
                    "--out", str(tmp_path_factory.mktemp("out") / "flips")], copy, says="benchmark")


def _csv_rows(bench: Path) -> list[list[str]]:
    return [[source, species, species] for source, species in read_benchmark(bench).image_species.items()]


# damaged predictions: what is wrong, and the CSV's text
def _csv(rows: list[list[str]], header: str = "source,before,after") -> str:
    return header + "\n" + "".join(",".join(row) + "\n" for row in rows)


PREDICTION_DAMAGE: dict[str, Callable[[list[list[str]]], str]] = {
    "no after column": lambda rows: _csv([row[:2] for row in rows], "source,before"),
    "no rows": lambda rows: _csv([]),
    "an image twice": lambda rows: _csv([*rows, rows[0]]),
    "the same image by two paths": lambda rows: _csv([*rows, [rows[0][0].removeprefix("images/"), *rows[0][1:]]]),
    "an image outside the benchmark": lambda rows: _csv([*rows, ["images/sp00/99999999.png", "sp00", "sp00"]]),
    "a path leaving the benchmark": lambda rows: _csv([["../" + rows[0][0], *rows[0][1:]], *rows[1:]]),
    "a species of the wrong folder": lambda rows: _csv([["sp05/" + Path(rows[0][0]).name, *rows[0][1:]], *rows[1:]]),
    "an unknown class": lambda rows: _csv([[rows[0][0], rows[0][1], "dog"], *rows[1:]]),
    "an empty value": lambda rows: _csv([[rows[0][0], "", rows[0][2]], *rows[1:]]),
    "a short row": lambda rows: _csv([rows[0][:1], *rows[1:]]),
    "a class with a line break": lambda rows: _csv([[rows[0][0], '"sp00\nsp01"', rows[0][2]], *rows[1:]]),
}


@pytest.mark.parametrize("damage", sorted(PREDICTION_DAMAGE))
def test_damaged_predictions_are_refused(specimens_with_sae: tuple[Path, Path], damage: str, tmp_path: Path) -> None:
    bench, _ = specimens_with_sae
    (tmp_path / "predictions.csv").write_text(PREDICTION_DAMAGE[damage](_csv_rows(bench)))
    assert_refused(["specimens", "score", "flips", "--predictions", str(tmp_path / "predictions.csv"), "--data", str(bench),
                    "--out", str(tmp_path / "out" / "flips")], tmp_path / "predictions.csv", bench)


@FUZZ
@given(garbage=st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode),
                         st.sampled_from([b"source,before,after\n\x00,\x00,\x00\n", b"\xff\xfe,,", b'"' * 3 + b"\n" * 3,
                                          b"source,before,after\n" + b"x" * 200_000 + b",sp00,sp00\n"])))
def test_predictions_that_are_not_a_csv_of_the_benchmark_are_refused(specimens_with_sae: tuple[Path, Path], garbage: bytes,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    bench, _ = specimens_with_sae
    folder = tmp_path_factory.mktemp("predictions")
    (folder / "predictions.csv").write_bytes(garbage)
    assert_refused(["specimens", "score", "flips", "--predictions", str(folder / "predictions.csv"), "--data", str(bench),
                    "--out", str(tmp_path_factory.mktemp("out") / "flips")], folder, bench, says="predictions")


@pytest.fixture(scope="module")
def probe_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A patch probe of the embedded model at blocks.2, as ``traitlens probe`` saves one."""
    from traitlens.backbones import load_backbone

    backbone = load_backbone("traitlens:specimens-vit")
    directory = tmp_path_factory.mktemp("probe") / "head"
    save_head(directory, LinearHead(torch.zeros(2, 128), torch.zeros(2), "blocks.2", "mean", ("a", "b"),
                                    {"spec": backbone.spec, "weights_fingerprint": backbone.weights_fingerprint()}))
    return directory


HEAD_DAMAGE: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("format", _ANY_TEXT.filter(lambda text: text != "traitlens.head")),
    # json_config.read_json_config compares the version with ==, so true passes for 1 (reported)
    ("version", st.one_of(st.integers().filter(lambda v: v != 1), _NOT_A_NUMBER.filter(lambda v: v is not True))),
    ("layer", st.one_of(_NOT_A_NAME.filter(lambda value: not isinstance(value, str)), st.just(""))),
    ("width", st.one_of(st.integers().filter(lambda v: v != 128), _NOT_A_NUMBER)),
    ("pooling", _ANY_TEXT.filter(lambda text: text not in ("cls", "mean"))),
    ("class_names", st.one_of(_NOT_A_NAME, st.just(["a", "a"]), st.just([]), st.just(["a", "b", "c"]))),
    ("model", st.one_of(_NOT_A_NAME.filter(lambda value: not isinstance(value, dict)), st.just({"spec": 3}))),
]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.sampled_from(HEAD_DAMAGE), data=st.data())
def test_a_damaged_head_is_refused(specimens_with_sae: tuple[Path, Path], probe_head: Path, damage: tuple[str, Any],
                                   data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    bench, sae = specimens_with_sae
    head = tmp_path_factory.mktemp("head") / "head"
    shutil.copytree(probe_head, head)
    config = json.loads((head / "head.json").read_text())
    key, values = damage
    if data.draw(st.booleans(), "delete"):
        del config[key]
    else:
        config[key] = data.draw(values, "value")
    (head / "head.json").write_text(json.dumps(config))
    assert_refused(["steer", *MODEL, "--sae", str(sae), "--data", str(bench), "--edit", "3=zero", "--patch-probe", str(head)],
                   head, bench, says="head")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from importlib import resources

    directory = tmp_path_factory.mktemp("model") / "vit"
    shutil.copytree(Path(str(resources.files("traitlens") / "specimens/default_model")), directory)
    return directory


MODEL_DAMAGE: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    (("format",), _ANY_TEXT.filter(lambda text: text != "traitlens.model")),
    (("architecture",), _ANY_TEXT),
    (("class_names",), st.one_of(_NOT_A_NAME, st.just(["sp00"] * 16), st.just([]))),
    (("shape",), _NOT_A_NAME.filter(lambda value: not isinstance(value, dict) or value)),
    (("shape", "embed_dim"), st.one_of(st.integers(max_value=0), st.sampled_from([127, 130]), _NOT_A_NUMBER)),
    (("shape", "patch_size"), st.one_of(st.integers(max_value=0), st.sampled_from([7, 10]), _NOT_A_NUMBER)),
    (("shape", "mlp_ratio"), st.one_of(st.floats(max_value=0), st.just(float("inf")), _NOT_A_NUMBER)),
]


@FUZZ
@given(damage=st.sampled_from(MODEL_DAMAGE), data=st.data())
def test_a_damaged_model_directory_is_refused(specimens_with_sae: tuple[Path, Path], model_dir: Path,
                                              damage: tuple[tuple[str, ...], Any], data: st.DataObject,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    bench, _ = specimens_with_sae
    model = tmp_path_factory.mktemp("model") / "vit"
    shutil.copytree(model_dir, model)
    config = json.loads((model / "model.json").read_text())
    path, values = damage
    container, key = _pointer(config, path)
    if data.draw(st.booleans(), "delete"):
        del container[key]
    else:
        container[key] = data.draw(values, "value")
    (model / "model.json").write_text(json.dumps(config, allow_nan=True))
    assert_refused(["specimens", "accuracy", "--model", f"traitlens:{model}", "--data", str(bench / "images")], model, bench)
