"""``specimens score segmentation``: IoU per label on hand-made maps, a segment folder scored, and
the sweep that segments a benchmark per species from another one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fuzz.harness import assert_refused, run_cli
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.specimens.segmentation_score import LabelCounts, summary


def test_iou_per_label_is_accumulated_over_images() -> None:
    counts = LabelCounts(3)
    truth_hw = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    pred_hw = np.array([[0, 0, 1, 0], [0, 0, 1, 0], [2, 2, 2, 0], [0, 2, 0, 0]])
    counts.add(pred_hw, truth_hw, (2, 2))  # one patch is 2x2 pixels
    counts.add(truth_hw, truth_hw, (2, 2))
    rows = counts.rows(["background", "body", "stripe"], first_trait=2)
    # label 1: 2 + 4 pixels in common of 4 + 4 truth and 2 + 4 predicted -> 6 / 8
    assert rows[1] == {"label": "body", "trait": False, "n_images": 2, "mean_area_patches": 1.0, "iou": 6 / 8}
    # label 2: image 1 has 3 right of 4 true and 4 predicted (union 5), image 2 all 4 -> 7 / 9
    assert rows[2]["iou"] == pytest.approx(7 / 9) and rows[2]["trait"] and rows[2]["mean_area_patches"] == 1.0
    assert rows[0]["iou"] == pytest.approx(15 / 19)  # 7 of 11, then 8 of 8
    assert summary(rows, min_patches=1.0) == {"mean_iou_traits": pytest.approx(7 / 9), "mean_iou_large_traits": pytest.approx(7 / 9),
                                              "large_traits": ["stripe"]}
    assert summary(rows, min_patches=2.0)["mean_iou_large_traits"] is None


@pytest.fixture(scope="module")
def benches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("segmentation")
    return (generate(GenerateConfig(root / "support", n=32, seed=11), show_progress=False),
            generate(GenerateConfig(root / "test", n=32, seed=12), show_progress=False))


def test_a_segment_folder_is_scored_without_its_support_image(benches: tuple[Path, Path], tmp_path: Path) -> None:
    _, test = benches
    species = test / "images" / "sp00"
    support = sorted(species.iterdir())[0]
    mask = test / "annotations" / "sp00" / support.name
    assert run_cli(["segment", "--support", str(support), "--support-mask", str(mask), "--data", str(species),
                    "--out", str(tmp_path / "pred")])[0] == 0
    code, printed, err = run_cli(["specimens", "score", "segmentation", "--pred", str(tmp_path / "pred"), "--data", str(test),
                                  "--out", str(tmp_path / "score")])
    assert code == 0, err
    result = json.loads((tmp_path / "score" / "segmentation.json").read_text())
    assert result["n_images"] == 1 and result["n_support_images_left_out"] == 1  # 2 images of sp00 among 32
    assert [row["label"] for row in result["labels"]][:3] == ["background", "body", "crest"]
    assert 0 < result["labels"][0]["iou"] <= 1 and "| wing_band |" in printed

    annotation = tmp_path / "pred" / result_annotation(tmp_path / "pred")
    original = annotation.read_bytes()
    Image.fromarray(np.full((96, 96), 12, np.uint8)).save(annotation)  # a label the folder does not name
    assert_refused(["specimens", "score", "segmentation", "--pred", str(tmp_path / "pred"), "--data", str(test),
                    "--out", str(tmp_path / "score3")], tmp_path / "pred", says="names only labels 0 to 9")
    annotation.write_bytes(original)

    (tmp_path / "pred" / "names.txt").write_text("background\nbody\nfeather\n")
    data = json.loads((tmp_path / "pred" / "segmentation.json").read_text())
    data["names"] = ["background", "body", "feather"]
    (tmp_path / "pred" / "segmentation.json").write_text(json.dumps(data))
    assert_refused(["specimens", "score", "segmentation", "--pred", str(tmp_path / "pred"), "--data", str(test),
                    "--out", str(tmp_path / "score2")], tmp_path / "pred", says="'feather'")
    data["images"][0]["annotation"] = "../../etc/passwd"
    (tmp_path / "pred" / "segmentation.json").write_text(json.dumps(data))
    assert_refused(["specimens", "score", "segmentation", "--pred", str(tmp_path / "pred"), "--data", str(test),
                    "--out", str(tmp_path / "score2")], tmp_path / "pred", says="inside the folder")
    assert not (tmp_path / "score2").exists()


def result_annotation(folder: Path) -> str:
    return str(json.loads((folder / "segmentation.json").read_text())["images"][-1]["annotation"])


def test_the_sweep_segments_each_species_from_its_own_support(benches: tuple[Path, Path], tmp_path: Path) -> None:
    support, test = benches
    code, printed, err = run_cli(["specimens", "score", "segmentation", "--model", "traitlens:specimens-vit", "--data", str(test),
                                  "--support-data", str(support), "--n-support", "1,2", "--layers", "blocks.1,blocks.2",
                                  "--out", str(tmp_path / "sweep")])
    assert code == 0, err
    runs = json.loads((tmp_path / "sweep" / "segmentation.json").read_text())["runs"]
    assert [(run["layer"], run["n_support"]) for run in runs] == [("blocks.1", 1), ("blocks.1", 2), ("blocks.2", 1), ("blocks.2", 2)]
    assert all(run["n_images"] == 32 and run["images_per_second"] > 0 for run in runs)
    assert all(0 <= row["iou"] <= 1 for run in runs for row in run["labels"] if row["iou"] is not None)
    assert "| traitlens:specimens-vit | blocks.2 | 2 |" in printed


def test_inconsistent_requests_are_one_line(benches: tuple[Path, Path], tmp_path: Path) -> None:
    _, test = benches
    base = ["specimens", "score", "segmentation", "--data", str(test), "--out", str(tmp_path / "out")]
    assert_refused(base, tmp_path, says="either --pred")
    assert_refused([*base, "--model", "traitlens:specimens-vit"], tmp_path, says="--support-data")
    assert_refused([*base, "--pred", str(tmp_path), "--model", "traitlens:specimens-vit"], tmp_path, says="either --pred")
    assert_refused([*base, "--pred", str(tmp_path), "--layers", "blocks.1"], tmp_path, says="go with --model")
    assert_refused([*base, "--pred", str(tmp_path)], tmp_path, says="no finished traitlens segmentation")
    assert_refused([*base, "--model", "traitlens:specimens-vit", "--support-data", str(test / "images")], tmp_path,
                   says="not a segmentation folder")
    assert_refused([*base, "--model", "traitlens:specimens-vit", "--support-data", str(test)], tmp_path, says="another seed")
