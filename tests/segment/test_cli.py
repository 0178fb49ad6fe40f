"""``traitlens segment`` end to end: a moved and recoloured shape found again, label ids and names
kept, the folder read back by ``extract``, resume after a kill, and one line for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fuzz.harness import assert_refused, run_cli
from tests.pretrained import mobilenet_checkpoint
from tests.resume import file_bytes, kill_at_call, outputs
from tests.segment.scenes import NAMES, iou, scene, write_scenes
from traitlens.data import open_image_source
from traitlens.segment.backends.features import FeatureBackend
from traitlens.segment.config import SegmentConfig, SegmentError
from traitlens.segment.job import segment
from traitlens.segment.result import read_segmentation


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list[np.ndarray]]:
    return write_scenes(tmp_path_factory.mktemp("scenes"))


def _run(*argv: str) -> tuple[int, str, str]:
    return run_cli(["segment", *argv])


def _refused(*argv: str, watched: Path, says: str) -> None:
    assert_refused(["segment", *argv], watched, says=says)


def test_a_moved_and_recoloured_shape_is_segmented_with_the_support_s_labels(
        scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path) -> None:
    support, mask, data, truths = scenes
    out = tmp_path / "segmented"
    code, printed, err = _run("--support", str(support), "--support-mask", str(mask), "--data", str(data),
                              "--model", "torchvision:mobilenet_v2", "--weights", str(mobilenet_checkpoint()), "--out", str(out))
    assert code == 0, err
    assert "segmented 3 images" in printed and "--data" in printed

    assert (out / "names.txt").read_text().splitlines() == list(NAMES)  # names.txt found beside the mask
    for number, truth_hw in enumerate(truths):
        pred_hw = np.asarray(Image.open(out / "annotations" / f"moved-{number}.png"))
        assert pred_hw.shape == truth_hw.shape and set(np.unique(pred_hw)) <= {0, 1, 2}
        # the shape in a colour the support never showed is found by its features, the stripe by its place in it
        assert iou(pred_hw, truth_hw, 0) > 0.9 and iou(pred_hw, truth_hw, 1) > 0.7 and iou(pred_hw, truth_hw, 2) > 0.85
        assert (out / "images" / f"moved-{number}.png").read_bytes() == (data / f"moved-{number}.png").read_bytes()

    # a segmentation folder every command reads: masks and label names as the support's
    source = open_image_source(out)
    assert source.kind == "segmentation" and source.mask_names == list(NAMES) and len(source) == 3
    result = read_segmentation(out)
    assert [image.source for image in result.images] == [f"images/moved-{n}.png" for n in range(3)]
    assert all(0 < image.confidence <= 1 for image in result.images) and result.grid_hw == (14, 14)
    page = (out / "index.html").read_text()
    assert "previews/support/000.png" in page and "shape" in page and (out / "previews" / "images" / "moved-0.png").is_file()
    assert not any(image.support for image in result.images)


def test_extract_reads_a_segment_folder_as_a_segmentation_source(
        scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path) -> None:
    support, mask, data, _ = scenes
    out = tmp_path / "segmented"
    assert _run("--support", str(support), "--support-mask", str(mask), "--data", str(data), "--out", str(out))[0] == 0
    assert run_cli(["extract", "--model", "traitlens:specimens-vit", "--data", str(out), "--layers", "blocks.1",
                    "--out", str(tmp_path / "acts")])[0] == 0
    labels = np.load(tmp_path / "acts" / "layers" / "blocks.1" / "patch_labels_00000.npy")
    assert labels.shape == (3, 64) and set(np.unique(labels)) <= {0, 1, 2} and (labels > 0).any()


def test_a_killed_run_resumes_to_the_same_files(scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    support, mask, data, _ = scenes

    def config(out: Path) -> SegmentConfig:  # a memory of the last image, carried across batches of one
        return SegmentConfig(data=data, out=out, support_images=(support,), support_masks=(mask,), memory=1, batch_size=1)

    whole = segment(config(tmp_path / "whole"), show_progress=False)
    kill_at_call(monkeypatch, FeatureBackend, "segment", 3)
    with pytest.raises(KeyboardInterrupt):
        segment(config(tmp_path / "killed"), show_progress=False)
    progress = sorted(path.name for path in (tmp_path / "killed" / ".traitlens-progress").iterdir())
    assert progress == ["batch-000000.json", "batch-000000.safetensors", "batch-000001.json", "batch-000001.safetensors"]
    monkeypatch.undo()

    segment(config(tmp_path / "killed"), show_progress=False)  # only the last image is segmented, from the saved memory

    assert outputs(tmp_path / "killed", "segmentation.json") == outputs(tmp_path / "whole", "segmentation.json")
    assert not (tmp_path / "killed" / ".traitlens-progress").exists()
    finished = file_bytes(tmp_path / "whole")
    kill_at_call(monkeypatch, FeatureBackend, "segment", 2)
    with pytest.raises(KeyboardInterrupt):
        segment(config(tmp_path / "memoryless"), show_progress=False)
    monkeypatch.undo()
    (tmp_path / "memoryless" / ".traitlens-progress" / "batch-000000.safetensors").unlink()
    with pytest.raises(SegmentError, match="the memory it carries is missing"):  # not a silently different result
        segment(config(tmp_path / "memoryless"), show_progress=False)
    kill_at_call(monkeypatch, FeatureBackend, "segment", 1)  # a finished run segments nothing
    assert segment(config(tmp_path / "whole"), show_progress=False)["images"] == whole["images"]
    assert file_bytes(tmp_path / "whole") == finished


def test_a_support_image_among_the_images_keeps_its_own_mask(scenes: tuple[Path, Path, Path, list[np.ndarray]],
                                                             tmp_path: Path) -> None:
    support, mask, _, _ = scenes
    data = tmp_path / "data"
    data.mkdir()
    (data / "labelled.png").write_bytes(support.read_bytes())
    image, _ = scene(30, 40, (40, 160, 200), seed=9)
    image.save(data / "other.png")
    result = segment(SegmentConfig(data=data, out=tmp_path / "out", support_images=(data / "labelled.png",),
                                   support_masks=(mask,), names=mask.parent / "names.txt"), show_progress=False)
    labelled = next(record for record in result["images"] if record["source"] == "images/labelled.png")
    assert labelled["support"] and labelled["confidence"] == 1.0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "annotations" / "labelled.png")), np.asarray(Image.open(mask)))
    assert not next(record for record in result["images"] if record["source"] == "images/other.png")["support"]


def test_a_damaged_progress_file_is_one_line(scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    support, mask, data, _ = scenes
    argv = ["--support", str(support), "--support-mask", str(mask), "--data", str(data), "--batch-size", "1",
            "--out", str(tmp_path / "out")]
    kill_at_call(monkeypatch, FeatureBackend, "segment", 2)
    assert _run(*argv)[0] == 130  # interrupted after the first batch
    monkeypatch.undo()
    (tmp_path / "out" / ".traitlens-progress" / "batch-000000.json").write_text(
        '{"format": "traitlens.job.batch", "confidences": ["../../x"]}')
    _refused(*argv, watched=tmp_path / "out", says="batch-000000.json is damaged")
    assert _run(*argv, "--overwrite")[0] == 0


def test_each_class_is_segmented_from_its_own_support(twin_free_bench: Path, tmp_path: Path) -> None:
    result = segment(SegmentConfig(data=twin_free_bench / "images", out=tmp_path / "out", support_data=twin_free_bench,
                                   match="class"), show_progress=False)
    classes = {image["source"].split("/")[1] for image in result["images"]}
    assert {image["class"] for image in result["images"]} == classes == {support["class"] for support in result["support"]}
    assert all(image["class"] == image["source"].split("/")[1] for image in result["images"])
    assert open_image_source(tmp_path / "out").class_names == sorted(classes)  # the class subfolders are kept
    support, mask = twin_free_bench / "images" / "sp00" / "00000000.png", twin_free_bench / "annotations" / "sp00" / "00000000.png"
    _refused("--support", str(support), "--support-mask", str(mask), "--match", "class", "--data", str(twin_free_bench / "images"),
             "--out", str(tmp_path / "refused"), watched=tmp_path, says="a --support IMG has no class")


@pytest.fixture(scope="module")
def twin_free_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from traitlens.specimens.generate import GenerateConfig, generate

    return generate(GenerateConfig(tmp_path_factory.mktemp("bench") / "bench", n=32, seed=3), show_progress=False)


def test_bad_input_is_one_line_and_writes_nothing(capsys: pytest.CaptureFixture[str],
                                                  scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path) -> None:
    support, mask, data, _ = scenes
    out = tmp_path / "out"
    small = tmp_path / "small-mask.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(small)
    unnamed = tmp_path / "unnamed-mask.png"
    labels = np.asarray(Image.open(mask)).copy()
    labels[:4, :4] = 7
    Image.fromarray(labels).save(unnamed)
    colour = tmp_path / "colour-mask.png"
    Image.fromarray(np.stack([labels.clip(0, 2) * 100, labels.clip(0, 2) * 50, labels.clip(0, 2)], axis=-1).astype(np.uint8)).save(colour)
    (tmp_path / "empty").mkdir()
    (tmp_path / "nameless").mkdir()
    Image.fromarray(labels.clip(0, 2)).save(tmp_path / "nameless" / "mask.png")
    cases = [
        (["--support", str(support), "--support-mask", str(small)], "is 40x40 (h x w) but its image is 96x96"),
        (["--support", str(support), "--support-mask", str(unnamed), "--names", str(support.parent / "names.txt")],
         "label(s) 7 that"),
        (["--support", str(support)], "1 --support image(s) but 0 --support-mask(s)"),
        (["--support", str(support), "--support-mask", str(tmp_path / "nameless" / "mask.png")], "--names FILE"),
        (["--support-data", str(data)], "not a segmentation folder"),
        ([], "no support"),
        (["--support", str(support), "--support-mask", str(mask), "--match", "class"], "--match class needs --data with classes"),
        (["--support", str(support), "--support-mask", str(mask), "--backend", "sam2"], "--sam2-checkpoint"),
        (["--support", str(support), "--support-mask", str(mask), "--memory", "-1"], "--memory"),
        (["--support", str(support), "--support-mask", str(mask), "--eps", "1e-12"], "--eps must be a finite number at least"),
        (["--support", str(support), "--support-mask", str(colour)], "is a colour image"),
    ]
    for extra, says in cases:
        _refused(*extra, "--data", str(data), "--out", str(out), watched=tmp_path, says=says)
        assert not out.exists()
    _refused("--support", str(support), "--support-mask", str(mask), "--data", str(tmp_path / "empty"), "--out", str(out),
             watched=tmp_path, says="no images")
    _refused("--support", str(support), "--support-mask", str(mask), "--data", str(data), "--out", str(data / "inside"),
             watched=data, says="inside --data")
    _refused("--support", str(support), "--support-mask", str(mask), "--data", str(data), "--out", str(data.parent),
             watched=data, says="is inside --out")
    twins = tmp_path / "twins"
    twins.mkdir()
    Image.open(support).save(twins / "same.png")
    Image.open(support).save(twins / "same.jpg")
    _refused("--support", str(support), "--support-mask", str(mask), "--data", str(twins), "--out", str(out),
             watched=tmp_path, says="would share one label map")
    assert not out.exists()


def test_sam2_is_wired_as_a_pseudo_video(scenes: tuple[Path, Path, Path, list[np.ndarray]],
                                         tmp_path: Path) -> None:
    """SAM 2's video predictor, random-init (no checkpoint can be fetched here): the support frame's
    masks go in, one label map per image comes out. Its quality cannot be measured without weights."""
    pytest.importorskip("sam2")
    support, mask, data, truths = scenes
    out = tmp_path / "sam2"
    code, _, err = _run("--backend", "sam2", "--random-init", "--sam2-image-size", "128", "--support", str(support),
                        "--support-mask", str(mask), "--data", str(data), "--batch-size", "2", "--out", str(out))
    assert code == 0, err
    for number, truth_hw in enumerate(truths):
        pred_hw = np.asarray(Image.open(out / "annotations" / f"moved-{number}.png"))
        assert pred_hw.shape == truth_hw.shape and set(np.unique(pred_hw)) <= {0, 1, 2}
    job = json.loads((out / "segmentation.json").read_text())["job"]
    assert job["sam2_model_config"].endswith("sam2.1_hiera_t.yaml") and job["sam2_image_size"] == 128


def test_sam2_missing_is_one_line_that_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                            scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path) -> None:
    support, mask, data, _ = scenes
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # what an environment without sam2 raises on import
    _refused("--backend", "sam2", "--sam2-checkpoint", str(support), "--support", str(support), "--support-mask", str(mask),
             "--data", str(data), "--out", str(tmp_path / "out"), watched=tmp_path, says="needs the sam2 package")
    assert not (tmp_path / "out").exists()


def test_scene_helper_draws_what_it_labels() -> None:
    image, labels_hw = scene(10, 10, (200, 0, 0), seed=0)
    rgb = np.asarray(image)
    assert (rgb[labels_hw == 2] == 240).all() and (rgb[labels_hw == 1] == (200, 0, 0)).all()


def test_a_large_photo_is_refined_at_a_capped_size(scenes: tuple[Path, Path, Path, list[np.ndarray]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The guided filter runs at most MAX_REFINED_SIDE a side (here lowered to 48 for the 96 px
    scenes), and its labels come back at the image's own size, as good as at full size."""
    from traitlens.segment.backends import features

    support, mask, data, truths = scenes
    config = SegmentConfig(data=data, out=tmp_path / "full", support_images=(support,), support_masks=(mask,),
                           model="torchvision:mobilenet_v2", weights=mobilenet_checkpoint())
    full = segment(config, show_progress=False)
    monkeypatch.setattr(features, "MAX_REFINED_SIDE", 48)
    capped = segment(SegmentConfig(**{**config.__dict__, "out": tmp_path / "capped"}), show_progress=False)
    for number, truth_hw in enumerate(truths):
        pred_hw = np.asarray(Image.open(tmp_path / "capped" / "annotations" / f"moved-{number}.png"))
        assert pred_hw.shape == truth_hw.shape and iou(pred_hw, truth_hw, 0) > 0.9
    assert abs(capped["mean_confidence"] - full["mean_confidence"]) < 0.05
