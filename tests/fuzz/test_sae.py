"""Bad inputs to ``train``, ``evaluate`` and ``import-sae`` (issue 12): one line, exit 2, and every
file that was there before left as it was, with nothing added."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import traitlens.sae.training as training
from tests.fuzz.harness import assert_refused, run_cli, snapshot
from traitlens.sae.architectures import ARCHITECTURES
from traitlens.sae.config import NORMALIZATIONS, is_int
from traitlens.store import store_from_arrays

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
D_IN, WIDTH = 8, 16


@dataclass(frozen=True)
class Artifacts:
    root: Path
    acts: Path
    sae: Path
    killed: Path  # a training run interrupted after its step-3 checkpoint
    saelens: Path
    saev: Path

    def train(self, *extra: str) -> list[str]:
        return ["train", "--acts", str(self.acts), "--layer", "l", "--k", "4", "--n-tokens", "640", "--batch-size", "64",
                "--checkpoint-every", "3", *extra]

    def evaluate(self, sae: Path, out: Path, *extra: str) -> list[str]:
        return ["evaluate", "--sae", str(sae), "--acts", str(self.acts), "--out", str(out), "--device", "cpu", *extra]


def _saev_file(path: Path, header: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    with path.open("wb") as handle:
        handle.write((json.dumps(header) + "\n").encode())
        torch.save(state, handle)
    return path


def _peer_tensors() -> dict[str, torch.Tensor]:
    """A peer SAE's weights in the layout SAELens and saev share (``W_enc`` is (d_in, width))."""
    generator = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(D_IN, WIDTH, generator=generator), "b_enc": torch.zeros(WIDTH),
            "W_dec": torch.randn(WIDTH, D_IN, generator=generator), "b_dec": torch.zeros(D_IN)}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("sae_fuzz")
    store_from_arrays(root / "acts", {"l": np.random.default_rng(0).normal(size=(256, D_IN)).astype(np.float32)}, tokens_per_image=4)
    found = Artifacts(root, root / "acts", root / "sae", root / "killed", root / "saelens", root / "saev.pt")
    assert run_cli([*found.train("--width", str(WIDTH)), "--out", str(found.sae)])[0] == 0

    real_step, calls = training.Trainer._train_run, {"n": 0}

    def dies_at_step_5(self: training.Trainer, *args: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.Trainer, "_train_run", dies_at_step_5)
        assert run_cli([*found.train("--width", str(WIDTH)), "--out", str(found.killed)])[0] == 130
    assert json.loads((found.killed / "checkpoint" / "state.json").read_text())["step"] == 3

    found.saelens.mkdir()
    cfg = {"architecture": "topk", "d_in": D_IN, "d_sae": WIDTH, "k": 4, "apply_b_dec_to_input": True, "normalize_activations": "none"}
    (found.saelens / "cfg.json").write_text(json.dumps(cfg))
    save_file(_peer_tensors(), str(found.saelens / "sae_weights.safetensors"))
    _saev_file(found.saev, {"d_vit": D_IN, "exp_factor": WIDTH // D_IN, "seed": 0}, _peer_tensors())
    for source in (found.saelens, found.saev):  # the untouched peers import fine
        assert run_cli(["import-sae", "--from", str(source), "--out", str(root / f"imported_{source.stem}")])[0] == 0
    return found


@contextmanager
def fresh_folder() -> Iterator[Path]:
    """A folder of one generated case (hypothesis shares function fixtures such as tmp_path between cases)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def _copy(source: Path, scratch: Path) -> Path:
    target = scratch / source.name
    shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    return target


# -- numbers on the command line ------------------------------------------------------------------
NOT_NUMBERS = st.sampled_from(["", "abc", "nan", "inf", "-inf", "1e400", "0x10", "1,,2", "4,", ",", "1 2"])
NON_INTEGERS = st.floats().filter(lambda x: not (math.isfinite(x) and x.is_integer())).map(repr)


def bad_int(minimum: int) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(max_value=minimum - 1).map(str), NON_INTEGERS, NOT_NUMBERS)


def bad_float(positive: bool) -> st.SearchStrategy[str]:
    too_small = st.floats(max_value=0.0) if positive else st.floats(max_value=-1e-300)
    return st.one_of(too_small.map(repr), NOT_NUMBERS)


def swept(bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A sweep with one bad value somewhere in it."""
    return st.tuples(st.lists(st.sampled_from(["1", "2", "16"]), max_size=2), bad).map(lambda parts: ",".join([*parts[0], parts[1]]))


TRAIN_FLAGS = {
    "--n-tokens": bad_int(1), "--batch-size": bad_int(1), "--checkpoint-every": bad_int(1), "--dead-after-tokens": bad_int(1),
    "--seed": bad_int(0), "--warmup-steps": bad_int(0), "--k": swept(bad_int(1)), "--width": swept(bad_int(1)),
    "--matryoshka-widths": swept(bad_int(1)),
    "--lr": swept(bad_float(positive=True)), "--expansion": swept(bad_float(positive=True)), "--l1": swept(bad_float(positive=False)),
    "--log-to": swept(st.sampled_from(["stdout", "", "TensorBoard", "csv"])),
}
EVALUATE_FLAGS = {"--batch-size": bad_int(1), "--image-batch-size": bad_int(1), "--max-images": bad_int(1)}


@FUZZ
@given(data=st.data())
def test_train_refuses_bad_numbers_when_parsing(artifacts: Artifacts, data: st.DataObject) -> None:
    flag = data.draw(st.sampled_from(sorted(TRAIN_FLAGS)))
    value = data.draw(TRAIN_FLAGS[flag])
    size = [] if flag in ("--width", "--expansion") else ["--width", str(WIDTH)]
    argv = [*artifacts.train(*size), f"{flag}={value}", "--out", str(artifacts.root / "never")]
    assert_refused(argv, artifacts.root, says=f"argument {flag}")


@FUZZ
@given(data=st.data())
def test_evaluate_refuses_bad_numbers_when_parsing(artifacts: Artifacts, data: st.DataObject) -> None:
    flag = data.draw(st.sampled_from(sorted(EVALUATE_FLAGS)))
    argv = artifacts.evaluate(artifacts.sae, artifacts.root / "never", f"{flag}={data.draw(EVALUATE_FLAGS[flag])}")
    assert_refused(argv, artifacts.root, says=f"argument {flag}")


def test_configs_that_no_sae_can_have_are_refused(artifacts: Artifacts) -> None:
    out = artifacts.root / "never"
    cases = {("--k", "17"): "k must be between 1 and the width 16", ("--expansion", "0.01"): "width must be an integer of at least 1",
             ("--matryoshka-widths", "8,4"): "matryoshka widths must increase strictly"}
    for (flag, value), says in cases.items():
        size = ["--width", str(WIDTH)] if flag != "--expansion" else []
        assert_refused([*artifacts.train(*size), flag, value, "--out", str(out)], artifacts.root, says=says)
    assert_refused([*artifacts.train("--width", "16"), "--k", "4,4", "--out", str(out)], artifacts.root, says="repeats a configuration")


# -- a saved SAE's config.json --------------------------------------------------------------------
GARBAGE = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
                    st.lists(st.integers(-3, 40), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _still_valid(field: str, value: Any) -> bool:
    """Values a config may hold for this SAE: those are not garbage (some would load, by design)."""
    if field in ("d_in", "width"):
        return is_int(value) and value == {"d_in": D_IN, "width": WIDTH}[field]
    if field == "k":
        return is_int(value) and 1 <= value <= WIDTH
    if field == "activation":
        return isinstance(value, str) and value in ARCHITECTURES
    if field == "normalization":
        return value in NORMALIZATIONS
    if field == "matryoshka_widths":
        return value is None or (isinstance(value, list) and all(is_int(width) for width in value))
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf  # jumprelu_*


SAE_FIELDS = ["d_in", "width", "k", "activation", "normalization", "matryoshka_widths", "jumprelu_initial_threshold", "jumprelu_bandwidth"]


@FUZZ
@given(field=st.sampled_from(SAE_FIELDS), value=GARBAGE)
def test_a_mutated_sae_config_is_one_line(artifacts: Artifacts, field: str, value: Any) -> None:
    assume(not _still_valid(field, value))
    with fresh_folder() as scratch:
        sae = _copy(artifacts.sae, scratch)
        config = json.loads((sae / "config.json").read_text())
        config["sae"][field] = value
        (sae / "config.json").write_text(json.dumps(config))
        assert_refused(artifacts.evaluate(sae, scratch / "m"), scratch, artifacts.acts)


@FUZZ
@given(text=st.one_of(st.binary(max_size=40), GARBAGE.map(lambda value: json.dumps(value).encode()),
                      st.sampled_from([b'{"format": "traitlens.sae", "sae": 5}', b'{"format": "traitlens.sae", "sae": {"d_in": 8}}',
                                       b'{"format": "other", "sae": {}}', b"\xff\xfe{}"])))
def test_a_damaged_config_file_is_one_line(artifacts: Artifacts, text: bytes) -> None:
    with fresh_folder() as scratch:
        sae = _copy(artifacts.sae, scratch)
        (sae / "config.json").write_bytes(text)
        assert_refused(artifacts.evaluate(sae, scratch / "m"), scratch, artifacts.acts)


def test_non_standard_json_in_a_saved_config_is_one_line(artifacts: Artifacts, tmp_path: Path) -> None:
    sae = _copy(artifacts.sae, tmp_path)
    config = json.loads((sae / "config.json").read_text())
    (sae / "config.json").write_text(json.dumps({**config, "metrics": {"nmse": float("nan")}}))  # NaN: not JSON
    assert_refused(["import-sae", "--from", str(sae), "--out", str(tmp_path / "out")], tmp_path, says="NaN")


def _weights_with(tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    return lambda path: save_file(tensors, str(path))


def test_damaged_weights_are_one_line(artifacts: Artifacts, tmp_path: Path) -> None:
    tensors = load_file(str(artifacts.sae / "sae.safetensors"))
    damages: dict[str, Callable[[Path], object]] = {
        "cannot read SAE weights": lambda path: path.write_bytes(path.read_bytes()[:-10]),
        "holds NaN or infinite values": _weights_with({**tensors, "b_enc": torch.full((WIDTH,), float("nan"))}),
        "tensors missing b_dec": _weights_with({name: t for name, t in tensors.items() if name != "b_dec"}),
        "tensors unexpected extra": _weights_with({**tensors, "extra": torch.zeros(1)}),
        "W_dec has shape (16, 9)": _weights_with({**tensors, "W_dec": torch.zeros(WIDTH, D_IN + 1)}),
    }
    for says, damage in damages.items():
        sae = tmp_path / says.replace(" ", "_")
        shutil.copytree(artifacts.sae, sae)
        damage(sae / "sae.safetensors")
        assert_refused(artifacts.evaluate(sae, tmp_path / "m"), tmp_path, artifacts.acts, says=says)


# -- importing peers' SAEs ------------------------------------------------------------------------
@FUZZ
@given(which=st.sampled_from(["cfg.json", "sae_weights.safetensors", "saev header", "saev body"]), junk=st.binary(max_size=64))
def test_garbage_peer_files_are_one_line(artifacts: Artifacts, which: str, junk: bytes) -> None:
    with fresh_folder() as scratch:
        if which.startswith("saev"):
            source = _copy(artifacts.saev, scratch)
            header, _, body = source.read_bytes().partition(b"\n")
            source.write_bytes(junk.replace(b"\n", b"") + b"\n" + body if which == "saev header" else header + b"\n" + junk)
        else:
            source = _copy(artifacts.saelens, scratch)
            (source / which).write_bytes(junk)
        assert_refused(["import-sae", "--from", str(source), "--out", str(scratch / "out")], scratch, says="cannot import")


@FUZZ
@given(field=st.sampled_from(["d_in", "d_sae"]), value=GARBAGE)
def test_a_peer_config_with_wrong_sizes_is_one_line(artifacts: Artifacts, field: str, value: Any) -> None:
    assume(not (is_int(value) and value == {"d_in": D_IN, "d_sae": WIDTH}[field]))
    with fresh_folder() as scratch:
        source = _copy(artifacts.saelens, scratch)
        cfg = json.loads((source / "cfg.json").read_text())
        (source / "cfg.json").write_text(json.dumps({**cfg, field: value}))
        assert_refused(["import-sae", "--from", str(source), "--out", str(scratch / "out")], scratch, says="cannot import")


@pytest.mark.parametrize(("change", "says"), [
    ({"k": "Infinity"}, "Infinity is not a JSON number"), ({"k": "NaN"}, "NaN is not a JSON number"), ({"k": 0}, "k must be a positive"),
    ({"architecture": "batchtopk", "matryoshka_widths": 5}, "matryoshka widths must be a list"),
    ({"normalize_activations": "expected_average_only_in"}, "no scaling_factor"), ({"architecture": "gated"}, "cannot be expressed"),
    ({"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input must be true or false"),
])
def test_bad_peer_config_values_are_one_line(artifacts: Artifacts, tmp_path: Path, change: dict[str, Any], says: str) -> None:
    source = _copy(artifacts.saelens, tmp_path)
    text = json.dumps({**json.loads((source / "cfg.json").read_text()), **change})
    (source / "cfg.json").write_text(text.replace('"Infinity"', "Infinity").replace('"NaN"', "NaN"))
    assert_refused(["import-sae", "--from", str(source), "--out", str(tmp_path / "out")], tmp_path, says=says)


def test_non_finite_peer_weights_are_one_line(artifacts: Artifacts, tmp_path: Path) -> None:
    source = _copy(artifacts.saelens, tmp_path)
    save_file({**_peer_tensors(), "b_dec": torch.full((D_IN,), float("inf"))}, str(source / "sae_weights.safetensors"))
    assert_refused(["import-sae", "--from", str(source), "--out", str(tmp_path / "out")], tmp_path, says="b_dec holds NaN")


# -- resuming a killed run --------------------------------------------------------------------------
STATE_FIELDS = ["step", "weights", "n_nonfinite", "tokens_in_window", "config"]


def _valid_state(field: str, value: Any) -> bool:
    """Values the killed run's state.json may hold: its own step, or other counts (they change
    only a warning and a logged density), which resuming accepts by design."""
    counts = value if field == "tokens_in_window" and isinstance(value, list) and len(value) == 1 else [value]
    return ((field == "step" and value == 3) or (field in ("n_nonfinite", "tokens_in_window")
                                                 and all(is_int(count) and count >= 0 for count in counts)))


@FUZZ
@given(field=st.sampled_from(STATE_FIELDS), value=GARBAGE)
def test_a_mutated_checkpoint_state_is_one_line(artifacts: Artifacts, field: str, value: Any) -> None:
    assume(not _valid_state(field, value))
    with fresh_folder() as scratch:
        run = _copy(artifacts.killed, scratch)
        state_path = run / "checkpoint" / "state.json"
        state = json.loads(state_path.read_text())
        state[field] = value
        state_path.write_text(json.dumps(state))
        assert_refused([*artifacts.train("--width", str(WIDTH)), "--out", str(run)], scratch, artifacts.acts)


@FUZZ
@given(text=st.one_of(st.binary(max_size=40), st.sampled_from([b"[]", b'{"step": 3}', b"\xff\xfe"])))
def test_a_garbage_checkpoint_state_is_one_line(artifacts: Artifacts, text: bytes) -> None:
    with fresh_folder() as scratch:
        run = _copy(artifacts.killed, scratch)
        (run / "checkpoint" / "state.json").write_bytes(text)
        assert_refused([*artifacts.train("--width", str(WIDTH)), "--out", str(run)], scratch, artifacts.acts,
                       says="damaged checkpoint")


def test_a_damaged_log_line_is_one_line(artifacts: Artifacts, tmp_path: Path) -> None:
    run = _copy(artifacts.killed, tmp_path)
    log = run / "train_log.jsonl"
    log.write_bytes(b"garbage\n" + log.read_bytes())
    assert_refused([*artifacts.train("--width", str(WIDTH)), "--out", str(run)], tmp_path, artifacts.acts,
                   says="line 1 is not a log record")


def test_checkpoint_tensors_that_do_not_fit_are_one_line(artifacts: Artifacts, tmp_path: Path) -> None:
    run = _copy(artifacts.killed, tmp_path)
    (weights,) = (run / "checkpoint").glob("state-*.safetensors")
    save_file({"rng.torch": torch.zeros(3, dtype=torch.uint8)}, str(weights))
    assert_refused([*artifacts.train("--width", str(WIDTH)), "--out", str(run)], tmp_path, artifacts.acts,
                   says="damaged checkpoint")


# -- where output goes --------------------------------------------------------------------------------
def test_train_output_policy(artifacts: Artifacts, tmp_path: Path) -> None:
    argv = artifacts.train("--width", str(WIDTH))
    (tmp_path / "file").write_text("mine")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert_refused([*argv, "--out", str(tmp_path / "file")], tmp_path, says="is a file")
    assert_refused([*argv, "--out", str(tmp_path / "file" / "sae")], tmp_path, says="is a file")
    assert_refused([*argv, "--out", str(tmp_path / "foreign")], tmp_path, says="holds no traitlens output")
    # the same command on a finished run of the same configuration keeps it as it is
    finished = _copy(artifacts.sae, tmp_path)
    before = snapshot(finished)
    code, out, err = run_cli([*argv, "--out", str(finished)])
    assert (code, snapshot(finished)) == (0, before) and "saved SAE" in out and "Traceback" not in err
    assert_refused([*argv, "--out", str(artifacts.root / "imported_saelens")], artifacts.root,
                   says="holds the output of traitlens import-sae")


def test_evaluate_output_policy(artifacts: Artifacts, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    (tmp_path / "file").write_text("my notes")
    for out in ("mine", "file"):
        assert_refused(artifacts.evaluate(artifacts.sae, tmp_path / out), tmp_path)
    code, out, _ = run_cli(artifacts.evaluate(artifacts.sae, tmp_path / "m"))
    assert code == 0 and "NMSE" in out and json.loads((tmp_path / "m" / "metrics.json").read_text())["layer"] == "l"
    assert_refused(artifacts.evaluate(artifacts.sae, tmp_path / "m"), tmp_path, says="--overwrite")
    assert run_cli(artifacts.evaluate(artifacts.sae, tmp_path / "m", "--overwrite"))[0] == 0
    # the file form of --out still works this release, with a deprecation line
    code, _, err = run_cli(artifacts.evaluate(artifacts.sae, tmp_path / "old.json"))
    assert code == 0 and "--out FILE.json is now --out FOLDER" in err and json.loads((tmp_path / "old.json").read_text())["layer"] == "l"


def test_import_output_policy(artifacts: Artifacts, tmp_path: Path) -> None:
    target = _copy(artifacts.sae, tmp_path)  # a train result: import-sae never replaces it, even with --overwrite
    for overwrite in ([], ["--overwrite"]):
        assert_refused(["import-sae", "--from", str(artifacts.saev), "--out", str(target), *overwrite], tmp_path,
                       says="holds the output of traitlens train")
