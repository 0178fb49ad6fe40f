"""``traitlens calibrate`` on a fine-tuned random-init ViT: gamma by the average logit gap and by
pseudo cross-validation, the report, and the calibrated model it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.finetune.conftest import MODEL
from tests.fuzz.harness import assert_refused, run_cli
from traitlens.backbones import load_backbone
from traitlens.finetune import FinetuneConfig, finetune

SEEN = ("blue", "cyan", "green", "red")


@pytest.fixture(scope="module")
def finetuned(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calibrate") / "model"
    finetune(FinetuneConfig(model=MODEL, data=colours, method="lora", out=out, classes=SEEN, pretrained=False, epochs=2,
                            batch_size=8, lr=0.05, device="cpu"), show_progress=False)
    return out


@pytest.mark.parametrize("method", ["gap", "pcv"])
def test_calibrate_writes_the_report_and_a_calibrated_model(method: str, finetuned: Path, colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated"
    code, printed, err = run_cli(["calibrate", "--model", f"traitlens:{finetuned}", "--data", str(colours), "--method", method,
                                  "--n-folds", "2", "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    result = json.loads((out / "calibration.json").read_text())
    assert result["absent_classes"] == ["yellow"] and result["finetuned_classes"] == list(SEEN)
    assert 0 <= result["ausuc"] <= 1 and (out / "seen-unseen.png").is_file() and "| calibrated" in printed
    assert len(result["folds"]) == (2 if method == "pcv" else 0)
    metrics = result["metrics"]
    assert set(metrics) >= {"before", "after", "ncm"} and metrics["before"]["absent"] is not None
    # the folder is the model with gamma on its absent class
    fine, calibrated = load_backbone(f"traitlens:{finetuned}"), load_backbone(f"traitlens:{out}")
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        shift = calibrated.forward(pixels) - fine.forward(pixels)
    assert torch.allclose(shift, torch.tensor([0.0, 0, 0, 0, result["gamma"]]).expand(3, -1), atol=1e-5)
    assert_refused(["calibrate", "--model", f"traitlens:{out}", "--data", str(colours), "--method", "gap",
                    "--out", str(tmp_path / "twice")], out, says="calibrated already")


def test_bad_requests_are_one_line(finetuned: Path, colours: Path, tmp_path: Path) -> None:
    base = ["calibrate", "--data", str(colours), "--out", str(tmp_path / "never")]
    assert_refused([*base, "--model", MODEL, "--random-init", "--method", "gap"], colours, says="--finetuned-classes")
    assert_refused([*base, "--model", f"traitlens:{finetuned}", "--method", "gap", "--finetuned-classes", "blue,pink"], colours,
                   says="pink")
    assert_refused([*base, "--model", f"traitlens:{finetuned}", "--method", "gap",
                    "--finetuned-classes", "blue,cyan,green,red,yellow"], colours, says="no absent class")
    assert_refused([*base, "--model", f"traitlens:{finetuned}", "--method", "gap", "--finetuned-classes", "blue"], colours,
                   says="at least 2 fine-tuned classes")
    assert_refused([*base, "--model", f"traitlens:{finetuned}", "--method", "pcv", "--finetuned-classes", "blue,cyan"], colours,
                   says="at least 3 fine-tuned classes")
    # test images of fine-tuned classes only: nothing to score the absent classes on
    seen_only = tmp_path / "seen"
    for name in ("blue", "red"):
        shutil.copytree(colours / name, seen_only / name)
    assert_refused(["calibrate", "--data", str(seen_only), "--out", str(tmp_path / "never"), "--model", f"traitlens:{finetuned}",
                    "--method", "gap"], colours, says="fine-tuned and of absent classes")
    assert not (tmp_path / "never").exists()


def test_an_earlier_calibration_is_replaced_only_with_overwrite(finetuned: Path, colours: Path, tmp_path: Path) -> None:
    argv = ["calibrate", "--model", f"traitlens:{finetuned}", "--data", str(colours), "--method", "gap", "--out", str(tmp_path / "cal"),
            "--device", "cpu"]
    assert run_cli(argv)[0] == 0
    assert_refused(argv, tmp_path / "cal", says="--overwrite")
    assert run_cli([*argv, "--overwrite"])[0] == 0
