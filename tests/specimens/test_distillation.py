"""train-model --teacher: the student's last-layer patch tokens learn the teacher's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import traitlens.specimens.training as training
from traitlens.backbones import load_backbone
from traitlens.cli import main
from traitlens.specimens.distillation import FeatureHint, TeacherConfig, load_teacher, patch_grid
from traitlens.specimens.model_dir import CNNShape, ViTShape
from traitlens.specimens.training import TrainModelConfig, train_model

STUDENT = ViTShape(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, pool="mean")


@pytest.fixture(scope="module")
def teacher(colors: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("teacher") / "cnn"
    train_model(TrainModelConfig(data=colors, out=out, epochs=4, batch_size=16, lr=3e-3,
                                 shape=CNNShape(img_size=32, channels=(8, 8, 16, 16))), show_progress=False)
    return f"traitlens:{out}"


def _student(colors: Path, out: Path, teacher: str | None, **changes: object) -> Path:
    config = TrainModelConfig(data=colors, out=out, epochs=8, batch_size=16, lr=3e-3, shape=STUDENT,
                              teacher=None if teacher is None else TeacherConfig(teacher, weight=20.0), **changes)  # type: ignore[arg-type]
    return train_model(config, show_progress=False)


def _hint_fit(student_dir: Path, teacher: str, colors: Path) -> float:
    """How much of the teacher's (normalized) patch tokens a least-squares map from the student's
    last-layer patch tokens explains, over the training images."""
    student = load_backbone(f"traitlens:{student_dir}")
    hint = FeatureHint(TeacherConfig(teacher), load_teacher(TeacherConfig(teacher)), student)
    images = sorted(colors.rglob("*.png"))
    from PIL import Image

    pixels = torch.stack([student.preprocess.image(Image.open(path)) for path in images])
    tokens = student.tokens(pixels, hint.student_layer)[hint.student_layer]
    student_pd = patch_grid(student, hint.student_layer, tokens).flatten(2).transpose(1, 2).reshape(-1, tokens.shape[-1])
    target_pd = hint.targets(pixels).reshape(len(student_pd), -1)
    design = torch.cat([student_pd, torch.ones(len(student_pd), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, target_pd.double()).solution
    residual = (design @ solution - target_pd.double()).square().sum()
    return float(1 - residual / (target_pd.double() - target_pd.double().mean(0)).square().sum())


def test_a_teacher_hands_its_patch_features_to_the_student(colors: Path, teacher: str, tmp_path: Path) -> None:
    plain = _student(colors, tmp_path / "plain", None)
    taught = _student(colors, tmp_path / "taught", teacher)
    # the plain student's tokens explain about half of the teacher's, the taught one's clearly more
    assert _hint_fit(taught, teacher, colors) > _hint_fit(plain, teacher, colors) + 0.1
    saved = json.loads((taught / "model.json").read_text())
    assert saved["training"]["teacher"] == {"spec": teacher, "layer": "-1", "weight": 20.0}
    assert saved["teacher"]["layer"] == "layer4" and len(saved["teacher"]["weights_fingerprint"]) > 8
    assert "teacher" not in json.loads((plain / "model.json").read_text())["training"]  # as before distillation existed
    assert set(load_file(str(taught / "model.safetensors"))) == set(load_file(str(plain / "model.safetensors")))  # no hint map


def test_a_killed_distillation_resumes_to_the_same_weights(colors: Path, teacher: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _student(colors, tmp_path / "whole", teacher)
    real_save = training.EpochCheckpoints.save

    def dies_after_two_epochs(self: training.EpochCheckpoints, epoch: int, *args: object) -> None:
        real_save(self, epoch, *args)  # type: ignore[arg-type]
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.EpochCheckpoints, "save", dies_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        _student(colors, tmp_path / "killed", teacher)
    monkeypatch.undo()
    resumed = _student(colors, tmp_path / "killed", teacher)
    assert (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_bad_teacher_options_are_one_line(colors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["specimens", "train-model", "--data", str(colors), "--out", str(tmp_path / "never"), "--arch", "vit-mean",
            "--img-size", "32", "--patch-size", "4"]
    for extra, message in ((["--teacher-layer", "layer3"], "need --teacher"), (["--distill-weight", "2"], "need --teacher"),
                           (["--teacher", "traitlens:no-such-model"], "no embedded model"),
                           (["--teacher", "traitlens:specimens-cnn", "--teacher-layer", "blocks.9"], "blocks.9")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "never").exists()
