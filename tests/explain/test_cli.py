"""``traitlens explain`` end to end: maps at image resolution, overlays and summary.json, and every
bad input as one line with exit code 2.

The embedded ``traitlens:specimens-vit`` is not in this checkout yet, so the tiny folder runs
through a random-init timm ViT (and the real MobileNetV2 where class names matter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import traitlens.explain.job as explain_job
from tests.backbones.builders import CLIP_WITH_TOKENIZER
from tests.explain.conftest import photo
from tests.html_pages import local_targets, parse_page
from tests.pretrained import mobilenet_checkpoint
from tests.resume import file_bytes, kill_at_call, outputs
from traitlens.backbones import load_backbone
from traitlens.cli import main
from traitlens.explain import ExplainConfig, explain
from traitlens.heads import LinearHead, save_head

TINY_VIT = "timm:vit_tiny_patch16_224?img_size=32&depth=2&embed_dim=32&num_heads=2&num_classes=3"


def _save(image: Image.Image, path: Path, size_wh: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.resize(size_wh) if size_wh else image).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class folder of real photos in three sizes and shapes, one in a nested folder."""
    root = tmp_path_factory.mktemp("explain") / "images"
    _save(photo("chelsea"), root / "cats" / "chelsea.jpg")
    _save(photo("coffee"), root / "cups" / "coffee.png", (150, 100))
    _save(photo("astronaut"), root / "cups" / "more" / "astronaut.png", (40, 60))
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["explain", *argv])
    except SystemExit as stop:  # argparse refuses a flag's value by exiting
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_writes_maps_overlays_and_a_summary(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    code, printed, _ = _run(capsys, "--model", TINY_VIT, "--random-init", "--data", str(folder), "--method", "grad-cam++",
                            "--refs", "auto", "--n-refs", "2", "--batch-size", "2", "--out", str(out))

    assert code == 0
    assert f"wrote 3 grad-cam++ maps, Finer-CAM (gamma 0.6) of layer blocks.0 to {out}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [image["source"] for image in summary["images"]] == ["cats/chelsea.jpg", "cups/coffee.png", "cups/more/astronaut.png"]
    for record in summary["images"]:
        with Image.open(folder / record["source"]) as original:
            height, width = original.height, original.width
        heat = np.load(out / record["map"])
        assert heat.shape == (height, width) == tuple(record["image_hw"]) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1  # (a random model's map may be blank: all 0)
        with Image.open(out / record["overlay"]) as drawn:
            assert drawn.size == (width, height) and drawn.mode == "RGB"
        assert (record["method"], record["gamma"], record["layer"]) == ("grad-cam++", 0.6, "blocks.0")
        assert record["target"] is None and len(record["reference_indices"]) == 2 == len(record["reference_scores"])
        # auto references: the highest other scores, below the predicted target's
        assert record["target_score"] >= record["reference_scores"][0] >= record["reference_scores"][1]
    # the gallery: one row per image, every picture it shows is a small file of the folder
    gallery = parse_page(out / "index.html")
    assert len(gallery.images) == 3 and all(target.is_file() for target in local_targets(out / "index.html", gallery))
    assert [path.relative_to(out).as_posix() for path in sorted((out / "gallery").rglob("*.jpg"))] == [
        "gallery/cats/chelsea.jpg", "gallery/cups/coffee.jpg", "gallery/cups/more/astronaut.jpg"]
    with Image.open(out / "gallery" / "cups" / "coffee.jpg") as thumbnail:
        assert thumbnail.height == 128 and thumbnail.width == 2 * 192 + 4  # image | map, 150x100 scaled to 128 high


@pytest.mark.parametrize(("fit", "covers_the_ends"), [("squash", True), ("pad", True), ("crop", False)])
def test_fit_decides_whether_the_map_covers_a_wide_photo(fit: str, covers_the_ends: bool, capsys: pytest.CaptureFixture[str],
                                                         folder: Path, tmp_path: Path) -> None:
    fit_args = [] if fit == "squash" else ["--fit", fit]  # squash is the default
    code, _, err = _run(capsys, "--model", "torchvision:mobilenet_v2", "--weights", str(mobilenet_checkpoint()),
                        "--data", str(folder / "cats"), "--method", "grad-cam", *fit_args, "--out", str(tmp_path / fit))

    assert code == 0, err
    chelsea = np.load(tmp_path / fit / "chelsea.npy")  # 300 x 451: its centre square is columns 75..375
    assert chelsea.shape == (300, 451) and chelsea[:, 75:-75].max() > 0
    # squash and pad see the whole photo, so the map reaches both ends; crop cuts them away, and
    # the map is exactly 0 there
    for end in (chelsea[:, :75], chelsea[:, -75:]):
        assert (end.max() > 0.1) if covers_the_ends else (end.max() == 0)
    assert json.loads((tmp_path / fit / "summary.json").read_text())["config"]["fit"] == fit


def test_a_single_image_file(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "--model", TINY_VIT, "--random-init", "--data", str(folder / "cups" / "coffee.png"),
                        "--method", "grad-cam", "--out", str(tmp_path / "one"))

    assert code == 0, err
    (record,) = json.loads((tmp_path / "one" / "summary.json").read_text())["images"]
    assert (record["map"], record["overlay"]) == ("coffee.npy", "coffee.png")
    assert np.load(tmp_path / "one" / "coffee.npy").shape == (100, 150)


def test_an_earlier_result_is_replaced_only_with_overwrite(capsys: pytest.CaptureFixture[str], folder: Path,
                                                          tmp_path: Path) -> None:
    common = ["--model", TINY_VIT, "--random-init", "--method", "grad-cam", "--out", str(tmp_path / "maps")]
    assert _run(capsys, *common, "--data", str(folder))[0] == 0
    first = sorted(path.relative_to(tmp_path) for path in (tmp_path / "maps").rglob("*.npy"))

    code, _, err = _run(capsys, *common, "--data", str(folder / "cats"))
    _assert_one_line_error(code, err, ["holds explain maps of another job (different data, dataset_fingerprint, n_images)",
                                       "--overwrite"])
    assert sorted(path.relative_to(tmp_path) for path in (tmp_path / "maps").rglob("*.npy")) == first

    assert _run(capsys, *common, "--data", str(folder / "cats"), "--overwrite")[0] == 0
    # the earlier maps are gone with the earlier summary: the folder is this run's alone
    assert [path.name for path in (tmp_path / "maps").rglob("*.npy")] == ["chelsea.npy"]
    assert len(json.loads((tmp_path / "maps" / "summary.json").read_text())["images"]) == 1


def test_a_killed_run_resumes_to_the_same_files_and_a_finished_one_is_kept(folder: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def config(out: Path) -> ExplainConfig:
        return ExplainConfig(model=TINY_VIT, pretrained=False, data=folder, method="grad-cam", refs="auto", batch_size=1, out=out)

    explain(config(tmp_path / "whole"), show_progress=False)
    kill_at_call(monkeypatch, explain_job, "compute_cams", 2)
    with pytest.raises(KeyboardInterrupt):
        explain(config(tmp_path / "killed"), show_progress=False)
    assert sorted(path.name for path in (tmp_path / "killed" / ".traitlens-progress").iterdir()) == ["batch-000000.json"]
    monkeypatch.undo()

    explain(config(tmp_path / "killed"), show_progress=False)  # resumed: only the last two images are computed

    assert outputs(tmp_path / "killed", "summary.json") == outputs(tmp_path / "whole", "summary.json")
    assert not (tmp_path / "killed" / ".traitlens-progress").exists() and not (tmp_path / "killed" / "job.json").exists()
    finished = file_bytes(tmp_path / "whole")
    kill_at_call(monkeypatch, explain_job, "compute_cams", 1)  # a finished run computes nothing
    assert explain(config(tmp_path / "whole"), show_progress=False)["images"] == json.loads(finished["summary.json"])["images"]
    assert file_bytes(tmp_path / "whole") == finished


def test_a_damaged_progress_file_is_one_line(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--model", TINY_VIT, "--random-init", "--data", str(folder), "--method", "grad-cam", "--batch-size", "2",
            "--out", str(tmp_path / "maps")]
    monkeypatch.setattr(explain_job, "atomic_write_json", _stop_at_the_summary(explain_job.atomic_write_json))
    assert _run(capsys, *argv)[0] == 130  # the command line reports the interruption
    monkeypatch.undo()
    (tmp_path / "maps" / ".traitlens-progress" / "batch-000000.json").write_text('{"format": "traitlens.job.batch", "images": 3}')

    code, _, err = _run(capsys, *argv)
    _assert_one_line_error(code, err, ["progress file", "batch-000000.json is damaged", "--overwrite"])
    assert _run(capsys, *argv, "--overwrite")[0] == 0


def _stop_at_the_summary(write: Any) -> Any:
    def stopping(path: Path, data: Any) -> None:
        if path.name == "summary.json":
            raise KeyboardInterrupt
        write(path, data)
    return stopping


def test_named_classes_and_gamma_zero_through_the_command_line(capsys: pytest.CaptureFixture[str], folder: Path,
                                                               tmp_path: Path) -> None:
    model = ["--model", "torchvision:mobilenet_v2", "--weights", str(mobilenet_checkpoint()),
             "--data", str(folder / "cats"), "--method", "grad-cam", "--target", "Egyptian cat"]
    assert _run(capsys, *model, "--refs", "tabby", "--out", str(tmp_path / "finer"))[0] == 0
    assert _run(capsys, *model, "--refs", "tabby", "--gamma", "0", "--out", str(tmp_path / "zero"))[0] == 0
    assert _run(capsys, *model, "--out", str(tmp_path / "base"))[0] == 0

    (finer,) = json.loads((tmp_path / "finer" / "summary.json").read_text())["images"]
    assert (finer["target"], finer["target_index"], finer["references"], finer["reference_indices"]) == (
        "Egyptian cat", 285, ["tabby"], [281])
    assert finer["target_score"] > finer["reference_scores"][0]
    base_map, zero_map = (np.load(tmp_path / name / "chelsea.npy") for name in ("base", "zero"))
    assert np.array_equal(zero_map, base_map)
    assert not np.array_equal(np.load(tmp_path / "finer" / "chelsea.npy"), base_map)


def test_a_saved_head_replaces_the_models_classes(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path) -> None:
    backbone = load_backbone(TINY_VIT, pretrained=False)
    weight_cd = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    save_head(tmp_path / "head", LinearHead(weight_cd, torch.tensor([0.0, 50.0]), "blocks.1", "mean", ("left", "right"),
                                            {"spec": TINY_VIT, "weights_fingerprint": backbone.weights_fingerprint()}))

    code, _, err = _run(capsys, "--model", TINY_VIT, "--random-init", "--head", str(tmp_path / "head"), "--data",
                        str(folder), "--method", "grad-cam", "--layer", "blocks.1", "--refs", "auto",
                        "--out", str(tmp_path / "out"))

    assert code == 0, err
    for record in json.loads((tmp_path / "out" / "summary.json").read_text())["images"]:
        # the head's bias makes "right" every image's prediction; its only other class is the reference
        assert (record["target"], record["references"]) == ("right", ["left"])


def test_text_concepts_and_zero_shot_classes_on_a_clip_model(capsys: pytest.CaptureFixture[str], folder: Path,
                                                              tmp_path: Path) -> None:
    common = ["--model", CLIP_WITH_TOKENIZER, "--random-init", "--data", str(folder / "cats"), "--method", "grad-cam"]
    code, _, err = _run(capsys, *common, "--concept", "striped fur", "--out", str(tmp_path / "plain"))
    assert code == 0, err
    code, _, err = _run(capsys, *common, "--concept", "striped fur", "--reference", "a cat", "--out", str(tmp_path / "vs"))
    assert code == 0, err
    plain, versus = (json.loads((tmp_path / name / "summary.json").read_text())["images"][0] for name in ("plain", "vs"))
    assert (plain["target"], plain["references"]) == ("striped fur", [])
    assert (versus["target"], versus["references"]) == ("striped fur", ["a cat"])
    assert not np.array_equal(np.load(tmp_path / "plain" / plain["map"]), np.load(tmp_path / "vs" / versus["map"]))

    code, _, err = _run(capsys, *common, "--zero-shot", "cat,dog,car", "--out", str(tmp_path / "zero"))
    assert code == 0, err
    record = json.loads((tmp_path / "zero" / "summary.json").read_text())["images"][0]
    assert record["target"] in ("cat", "dog", "car") and record["references"] == []


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--concept", "stripes"], ["has no text tower", "open_clip"]),
        (["--zero-shot", "cat,dog"], ["has no text tower"]),
        (["--reference", "a cat"], ["a reference prompt needs a concept prompt"]),
        (["--concept", "stripes", "--head", "somewhere"], ["choose one head"]),
    ],
)
def test_text_heads_refuse_what_they_cannot_do(argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str],
                                               folder: Path, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "--model", TINY_VIT, "--random-init", "--data", str(folder), "--method", "grad-cam",
                        *argv, "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, fragments)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--method", "gradcam"], ["unknown method 'gradcam'; choose one of cam, grad-cam"]),
        (["--method", "grad-cam", "--refs", "auto", "--gamma", "-1"], ["--gamma", "a finite number of at least 0"]),
        (["--method", "grad-cam", "--refs", "auto", "--n-refs", "3"], ["3 reference classes asked for", "only 2"]),
        (["--method", "grad-cam", "--refs", "1", "--n-refs", "1"], ["applies only to automatic references"]),
        (["--method", "grad-cam", "--target", "7"], ["target class 7 is out of range: the head has 3 classes (0..2)"]),
        (["--method", "grad-cam", "--target", "tabby"], ["target class 'tabby' is not a class index, and the model has no class names"]),
        (["--method", "grad-cam", "--refs", "1,1"], ["reference classes repeat: 1, 1"]),
        (["--method", "eigen-cam", "--refs", "auto"], ["eigen-cam does not depend on the class"]),
        (["--method", "grad-cam", "--layer", "9"], ["unknown layer '9'", "blocks.0, blocks.1"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str],
                                          folder: Path, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "--model", TINY_VIT, "--random-init", "--data", str(folder), *argv,
                        "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, fragments)


def test_unknown_class_names_and_unreadable_images_are_one_line(capsys: pytest.CaptureFixture[str], folder: Path,
                                                                tmp_path: Path) -> None:
    code, _, err = _run(capsys, "--model", "torchvision:mobilenet_v2", "--weights", str(mobilenet_checkpoint()),
                        "--data", str(folder / "cats"), "--method", "cam", "--target", "Egyptian kat",
                        "--out", str(tmp_path / "kat"))
    _assert_one_line_error(code, err, ["unknown target class 'Egyptian kat'", "did you mean 'Egyptian cat'"])

    broken = tmp_path / "broken"
    _save(photo("coffee"), broken / "fine.png", (40, 30))
    (broken / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _run(capsys, "--model", TINY_VIT, "--random-init", "--data", str(broken), "--method", "layercam",
                        "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, ["cannot read image corrupt.jpg"])
    assert not (tmp_path / "out" / "summary.json").exists()


def _assert_one_line_error(code: int, err: str, fragments: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "img/s]" not in line]
    assert code == 2
    # "traitlens: error: ..." from the command, "traitlens explain: error: ..." from its parser
    assert len(lines) == 1 and lines[0].startswith("traitlens") and ": error: " in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_head_replaced_in_place_is_not_taken_for_the_same(capsys: pytest.CaptureFixture[str], folder: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = load_backbone(TINY_VIT, pretrained=False)
    model = {"spec": TINY_VIT, "weights_fingerprint": backbone.weights_fingerprint()}
    save_head(tmp_path / "head", LinearHead(torch.ones(2, 32), torch.zeros(2), "blocks.1", "mean", ("a", "b"), model))
    argv = ["--model", TINY_VIT, "--random-init", "--head", str(tmp_path / "head"), "--data", str(folder),
            "--method", "grad-cam", "--batch-size", "1", "--out", str(tmp_path / "maps")]
    kill_at_call(monkeypatch, explain_job, "compute_cams", 2)
    assert _run(capsys, *argv)[0] == 130  # killed after its first batch
    monkeypatch.undo()
    save_head(tmp_path / "head", LinearHead(-torch.ones(2, 32), torch.zeros(2), "blocks.1", "mean", ("a", "b"), model))
    code, _, err = _run(capsys, *argv)
    _assert_one_line_error(code, err, ["head_sha256", "--overwrite"])


def test_a_class_folder_named_like_the_progress_files_keeps_its_maps(folder: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    _save(photo("chelsea"), images / "progress" / "chelsea.png", (48, 48))
    _save(photo("coffee"), images / "cups" / "coffee.png", (48, 48))
    out = tmp_path / "maps"
    explain(ExplainConfig(model=TINY_VIT, pretrained=False, data=images, method="grad-cam", batch_size=1, out=out),
            show_progress=False)
    assert (out / "progress" / "chelsea.npy").is_file() and (out / "cups" / "coffee.npy").is_file()
