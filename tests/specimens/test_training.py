"""train-model: deterministic, resumable, and loadable as ``traitlens:DIR`` with its head."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from traitlens.backbones import load_backbone
from traitlens.cli import main
from traitlens.errors import SpecError
from traitlens.specimens.model_dir import ViTShape
from traitlens.specimens.training import ModelTrainingError, TrainModelConfig, train_model

TINY = ViTShape(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def _config(data: Path, out: Path, **changes: object) -> TrainModelConfig:
    options: dict = {"epochs": 4, "batch_size": 16, "lr": 3e-3, "shape": TINY, **changes}
    return TrainModelConfig(data=data, out=out, **options)


def test_training_learns_is_deterministic_and_loads_as_a_backbone(colors: Path, tmp_path: Path) -> None:
    first = train_model(_config(colors, tmp_path / "a"), show_progress=False)
    second = train_model(_config(colors, tmp_path / "b"), show_progress=False)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    backbone = load_backbone(f"traitlens:{first}")
    assert backbone.class_names == ["blue", "green", "red"]
    assert backbone.layer(-1).layout.grid_hw == (4, 4) and backbone.layer(-1).layout.has_cls
    pixels = backbone.preprocess.image(Image.open(next((colors / "red").iterdir())))
    with torch.no_grad():
        assert backbone.class_names[int(backbone.forward(pixels[None]).argmax())] == "red"
    assert not (first / "checkpoint").exists()
    assert main(["specimens", "accuracy", "--model", f"traitlens:{first}", "--data", str(colors)]) == 0


def test_a_killed_run_resumes_to_the_same_weights(colors: Path, tmp_path: Path) -> None:
    uninterrupted = train_model(_config(colors, tmp_path / "whole", epochs=20), show_progress=False)
    command = [sys.executable, "-m", "traitlens", "specimens", "train-model", "--data", str(colors), "--out", str(tmp_path / "killed"),
               "--epochs", "20", "--batch-size", "16", "--lr", "3e-3", "--img-size", "32", "--patch-size", "8",
               "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--mlp-ratio", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model.json").exists(), "the run finished before it could be killed"
    assert main(command[3:]) == 0
    resumed = load_file(str(tmp_path / "killed" / "model.safetensors"))
    whole = load_file(str(uninterrupted / "model.safetensors"))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_bad_inputs(colors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = train_model(_config(colors, tmp_path / "done", epochs=1), show_progress=False)
    weights = (done / "model.safetensors").read_bytes()
    # the same training again is already done; other settings are refused; --overwrite trains again
    assert train_model(_config(colors, done, epochs=1), show_progress=False) == done
    with pytest.raises(ModelTrainingError, match="already holds a model trained with other settings"):
        train_model(_config(colors, done, epochs=2), show_progress=False)
    assert (done / "model.safetensors").read_bytes() == weights
    train_model(_config(colors, done, epochs=2, overwrite=True), show_progress=False)
    assert (done / "model.safetensors").read_bytes() != weights
    for bad in ({"epochs": 0}, {"lr": float("inf")}, {"batch_size": 2.5}, {"val_fraction": 1.0}, {"seed": -1},
                {"label_smoothing": 1.0}):
        with pytest.raises(ModelTrainingError):
            _config(colors, tmp_path / "never", **bad)
    assert not (tmp_path / "never").exists()
    for shape in ({"embed_dim": 30, "num_heads": 4}, {"img_size": 30, "patch_size": 8}, {"depth": 0}, {"mlp_ratio": float("nan")},
                  {"stem": "resnet"}, {"stem": "conv", "img_size": 36, "patch_size": 6}):
        with pytest.raises(SpecError):
            ViTShape(**shape)
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    assert main(["specimens", "train-model", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "x")]) == 2
    assert "unlabelled" in capsys.readouterr().err
    assert main(["specimens", "accuracy", "--model", "traitlens:no-such-model", "--data", str(colors)]) == 2
    assert "no embedded model" in capsys.readouterr().err


@pytest.mark.parametrize(("arch", "stem"), [("vit-mean", "patch"), ("vit-mean", "conv"), ("cnn", None)])
def test_each_architecture_trains_and_loads_with_its_grid(arch: str, stem: str | None, colors: Path, tmp_path: Path) -> None:
    shape_flags = (["--channels", "8,8,16,16", "--output-stride", "8"] if arch == "cnn"
                   else ["--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--stem", str(stem)])
    out = tmp_path / arch
    assert main(["specimens", "train-model", "--data", str(colors), "--out", str(out), "--arch", arch, "--epochs", "6",
                 "--batch-size", "16", "--lr", "3e-3", "--img-size", "32", *shape_flags]) == 0
    backbone = load_backbone(f"traitlens:{out}")
    last = backbone.layer(-1).layout
    # the mean-pooled ViT has no CLS token and an 8x8 grid; the CNN keeps 32 / 8 = 4 cells a side
    assert (last.grid_hw, last.has_cls) == (((8, 8), False) if arch == "vit-mean" else ((4, 4), False))
    pixels = backbone.preprocess.image(Image.open(next((colors / "green").iterdir())))
    with torch.no_grad():
        assert backbone.class_names[int(backbone.forward(pixels[None]).argmax())] == "green"


def test_flags_of_another_architecture_are_refused(colors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for arch, flag in (("cnn", ["--patch-size", "4"]), ("vit-cls", ["--channels", "8,8,8,8"]), ("cnn", ["--blocks", "1,1"]),
                       ("cnn", ["--stem", "conv"]), ("vit-mean", ["--stem", "conv", "--patch-size", "6", "--img-size", "36"])):
        assert main(["specimens", "train-model", "--data", str(colors), "--out", str(tmp_path / "never"), "--arch", arch, *flag]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "never").exists()
