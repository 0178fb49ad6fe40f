"""The command line: results printed, and every bad input one line on stderr with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.store.conftest import TINY_VIT, make_class_folder
from traitlens.cli import main
from traitlens.store import ActivationStore


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("traitlens: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = make_class_folder(tmp_path / "images", per_class=2)
    (root / "ant" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_extract_prints_a_summary_with_the_skipped_image(capsys: pytest.CaptureFixture[str], images: Path, tmp_path: Path) -> None:
    code, out, err = _run(capsys, "extract", "--model", TINY_VIT, "--random-init", "--data", str(images),
                          "--layers", "-1", "--out", str(tmp_path / "acts"))
    assert code == 0
    assert "6 images, 1 skipped" in out and "skipped  ant/corrupt.jpg" in out
    assert "layer blocks.1: width 32, grid 2x2, 4 tokens/image, 24 tokens" in out
    assert "warning: skipping cannot read image ant/corrupt.jpg" in err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--model", "nosuch:model"], ["unknown model provider 'nosuch'"]),
        (["--model", "timm:not_a_model_name"], ["timm has no model 'not_a_model_name'"]),
        (["--model", TINY_VIT, "--layers", "12"], ["unknown layer '12'", "blocks.0, blocks.1"]),
        (["--model", TINY_VIT, "--layers", "blocks.9"], ["unknown layer 'blocks.9'"]),
        (["--model", TINY_VIT + "&oops"], ["option 'oops'", "key=value"]),
    ],
)
def test_bad_model_or_layer_is_one_line(capsys: pytest.CaptureFixture[str], images: Path, tmp_path: Path,
                                        argv: list[str], fragments: list[str]) -> None:
    defaults = {"--layers": "0"}
    args = list(argv) + [item for key, value in defaults.items() if key not in argv for item in (key, value)]
    code, _, err = _run(capsys, "extract", *args, "--random-init", "--data", str(images), "--out", str(tmp_path / "acts"))
    _assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "acts" / "manifest.json").exists()


def test_bad_data_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for data, fragment in ((tmp_path / "empty", "no images found"), (tmp_path / "missing", "does not exist")):
        code, _, err = _run(capsys, "extract", "--model", TINY_VIT, "--random-init", "--data", str(data),
                            "--layers", "0", "--out", str(tmp_path / "acts"))
        _assert_one_line_error(code, err, fragment)


def test_pretrained_weights_without_a_hub_say_what_to_do(capsys: pytest.CaptureFixture[str], images: Path, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "explain", "--model", "timm:vit_tiny_patch16_224", "--data", str(images),
                        "--method", "grad-cam", "--out", str(tmp_path / "maps"))
    _assert_one_line_error(code, err, "timm:vit_tiny_patch16_224", "--weights PATH", "--random-init")


def test_inspect_of_something_that_is_not_a_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "inspect", "--acts", str(tmp_path))
    _assert_one_line_error(code, err, "no activation store", "manifest.json missing")


def test_layers_lists_widths_and_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "layers", "--model", "timm:vit_small_patch14_reg4_dinov2?img_size=28&depth=2", "--random-init")
    assert code == 0
    assert "blocks.1" in out and "width   384  prefix 5  grid 2x2" in out


def test_python_dash_m_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "traitlens", "extract", "--model", "bad", "--data", str(tmp_path),
                             "--layers", "0", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert "PROVIDER:NAME" in result.stderr


def test_train_from_the_command_line_and_its_bad_inputs(capsys: pytest.CaptureFixture[str], images: Path, tmp_path: Path) -> None:
    acts = tmp_path / "acts"
    assert main(["extract", "--model", TINY_VIT, "--random-init", "--data", str(images), "--layers", "-1",
                 "--out", str(acts), "--tokens", "all"]) == 0
    capsys.readouterr()
    base = ["train", "--acts", str(acts), "--layer", "-1", "--n-tokens", "120", "--batch-size", "30"]
    code, out, _ = _run(capsys, *base, "--arch", "topk", "--k", "2,4", "--width", "64", "--out", str(tmp_path / "sweep"))
    assert code == 0 and out.count("saved SAE") == 2 and "topk_w64_k4_lr0.0003" in out
    # the same command again finds the sweep finished and keeps it; the old --resume still parses, with one line
    code, out, err = _run(capsys, *base, "--arch", "topk", "--k", "2,4", "--width", "64", "--out", str(tmp_path / "sweep"))
    assert code == 0 and out.count("saved SAE") == 2 and "already complete" in err and "--resume" not in err
    code, out, err = _run(capsys, *base, "--arch", "topk", "--k", "2,4", "--width", "64", "--out", str(tmp_path / "sweep"), "--resume")
    assert code == 0 and out.count("saved SAE") == 2 and "--resume is no longer needed" in err
    code, _, err = _run(capsys, *base, "--arch", "topk", "--k", "2", "--width", "64", "--out", str(tmp_path / "sweep"))
    _assert_one_line_error(code, err, "already holds training output")
    code, _, err = _run(capsys, *base, "--layer", "blocks.0", "--out", str(tmp_path / "x"))
    _assert_one_line_error(code, err, "layer 'blocks.0' is not in the store", "stored layers: blocks.1")
    code, _, err = _run(capsys, *base, "--k", "500", "--width", "64", "--out", str(tmp_path / "x"))
    _assert_one_line_error(code, err, "k must be between 1 and the width 64")
    code, _, err = _run(capsys, "train", "--acts", str(tmp_path / "nope"), "--layer", "0", "--n-tokens", "10", "--out", str(tmp_path / "x"))
    _assert_one_line_error(code, err, "no activation store")


def test_the_command_line_retrains_the_report_sae_exactly(capsys: pytest.CaptureFixture[str], images: Path,
                                                         tmp_path: Path) -> None:
    """docs/results.md retrains the SAE of ``specimens report`` with ``traitlens train``: same weights."""
    from safetensors.torch import load_file

    from traitlens.specimens.report import train_trait_sae

    acts = tmp_path / "acts"
    assert main(["extract", "--model", TINY_VIT, "--random-init", "--data", str(images), "--layers", "-1",
                 "--out", str(acts), "--tokens", "all"]) == 0
    layer = ActivationStore(acts).layer(-1)
    report_sae = train_trait_sae(acts, layer.name, tmp_path / "report-sae", expansion=2, k=4, epochs=3)
    code, _, _ = _run(capsys, "train", "--acts", str(acts), "--layer", layer.name, "--arch", "topk", "--k", "4",
                      "--expansion", "2", "--normalize", "none", "--batch-size", "1024", "--lr", "1e-3",
                      "--warmup-steps", "20", "--n-tokens", str(3 * layer.n_tokens), "--out", str(tmp_path / "cli-sae"))
    assert code == 0
    expected, got = load_file(report_sae / "sae.safetensors"), load_file(tmp_path / "cli-sae" / "sae.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[name], got[name]) for name in expected)


@pytest.mark.parametrize("command", [
    ["explain", "--model", TINY_VIT, "--random-init", "--data", "photos", "--method", "grad-cam"],
    ["probe", "--acts", "acts"],
    ["specimens", "generate", "--n-images", "2", "--seed", "0"],
    ["specimens", "score", "flips", "--predictions", "edited.csv", "--data", "specimens"],
    ["specimens", "score", "localization", "--heatmaps", "maps", "--data", "specimens"],
])
def test_an_output_folder_inside_a_file_is_refused_first(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    """Refused before any work; explain checks its request first (so --overwrite never empties a
    folder for a bad one), so it is given real photos."""
    make_class_folder(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("mine")
    code, _, err = _run(capsys, *command, "--out", str(tmp_path / "file" / "out"))
    _assert_one_line_error(code, err, "cannot be created", "is a file")
    assert (tmp_path / "file").read_text() == "mine"
