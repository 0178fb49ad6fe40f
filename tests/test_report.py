"""``traitlens report`` on data it did not make: a specimens benchmark read as any segmentation
source (labels the model's classes, masks), and a class folder under a random-init model whose
classes are not the labels. Every step runs, the page parses, shows its pictures, and a second run
resumes to the same page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.html_pages import local_targets, parse_page
from tests.store.conftest import TINY_VIT, make_class_folder
from traitlens.cli import main
from traitlens.demo import DEMO_MODEL
from traitlens.report import DataReportConfig, report_on_data
from traitlens.specimens.generate import GenerateConfig, generate


def _targets(report: Path) -> list[Path]:
    page = parse_page(report)
    targets = local_targets(report, page)
    assert targets and all(target.is_file() for target in targets)
    return targets


def test_a_report_on_labelled_and_masked_images(tmp_path: Path) -> None:
    data = generate(GenerateConfig(tmp_path / "specimens", n=48, seed=3), show_progress=False)
    config = DataReportConfig(model="traitlens:specimens-vit", out=tmp_path / "report", data=data, layer="blocks.1",
                              sae_expansion=2, sae_epochs=2, max_classes=4, n_random=1)
    printed = report_on_data(config)
    result = json.loads((config.out / "report.json").read_text())
    assert 0 < result["sae"]["explained_variance"] <= 1 and result["accuracy"]["n_images"] == 48
    assert [len(row["latents"]) for row in result["classes"]] == [3] * 4
    assert result["labels"] and all(0 <= row["ap"] <= 1 for row in result["labels"])
    causal = result["causal"]
    assert [row["class"] for row in causal] == [row["class"] for row in result["classes"]]
    assert all(row["n_eligible"] <= 3 for row in causal)  # 48 specimens of 16 species: 3 each
    assert f"Report: {config.out / 'report.html'}" in printed
    targets = _targets(config.out / "report.html")
    figures = {target.name.split("-")[0] for target in targets if target.parent.name == "report-figures"}
    assert figures == {"latent", "label", "cam", "finer"}
    html = (config.out / "report.html").read_text()
    assert html.count("<svg") == 1 and html.count("<table>") == 3
    page_bytes = (config.out / "report.html").read_bytes()
    assert report_on_data(config) == printed and (config.out / "report.html").read_bytes() == page_bytes


def test_a_model_whose_classes_are_not_the_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_class_folder(tmp_path / "images")
    argv = ["report", "--model", TINY_VIT, "--random-init", "--data", str(images), "--sae-epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "report")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "report" / "report.json").read_text())
    assert result["accuracy"] is None and result["causal"] == [] and result["labels"] == []
    assert result["classes"]  # the folder's labels still rank latents
    _targets(tmp_path / "report" / "report.html")
    capsys.readouterr()
    assert main([*argv[:-2], "--out", str(tmp_path / "other"), "--layer", "no-such-layer"]) == 2
    assert "no-such-layer" in capsys.readouterr().err


def test_without_data_only_the_demos_model_has_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--model", TINY_VIT, "--random-init", "--out", str(tmp_path / "r")]) == 2
    assert "--data is needed" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # the demo's model before it moved to the mean-pooled ViT: refused, naming the one that is
    assert main(["report", "--model", "traitlens:specimens-vit", "--out", str(tmp_path / "r")]) == 2
    assert f"on {DEMO_MODEL}" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_images_the_store_skipped_and_classes_without_images(tmp_path: Path) -> None:
    """An unreadable image is skipped by extraction and never loaded again; a class the dataset's
    class list names but has no image of is left out (no KeyError, no NaN in report.json)."""
    import datasets

    data = generate(GenerateConfig(tmp_path / "specimens", n=24, seed=5), show_progress=False)
    records = json.loads((data / "traits.json").read_text())["images"]
    kept = [record for record in records if record["species"] in ("sp00", "sp01", "sp02")]
    names = [f"sp{index:02d}" for index in range(16)]  # the ClassLabel names every species
    datasets.disable_progress_bars()
    rows = {"image": [str(data / record["source"]) for record in kept],
            "label": [names.index(record["species"]) for record in kept]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "hf")
    config = DataReportConfig(model="traitlens:specimens-vit", out=tmp_path / "report", data=tmp_path / "hf",
                              layer="blocks.1", sae_expansion=2, sae_epochs=1, n_random=1)
    report_on_data(config)
    result = json.loads((config.out / "report.json").read_text())
    assert {row["class"] for row in result["classes"]} == {"sp00", "sp01", "sp02"}
    assert [row["class"] for row in result["causal"]] == [row["class"] for row in result["classes"]]

    folder = tmp_path / "folder"
    for record in kept:
        target = folder / record["species"] / Path(record["source"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((data / record["source"]).read_bytes())
    (folder / "sp00" / "broken.png").write_bytes(b"not an image")
    config = DataReportConfig(model="traitlens:specimens-vit", out=tmp_path / "report-broken", data=folder,
                              layer="blocks.1", sae_expansion=2, sae_epochs=1, n_random=1)
    report_on_data(config)
    result = json.loads((config.out / "report.json").read_text())
    assert result["causal"] and all(row["n_eligible"] <= len(kept) for row in result["causal"])
    _targets(config.out / "report.html")


def test_overwrite_keeps_the_folder_when_the_request_is_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_class_folder(tmp_path / "images")
    out = tmp_path / "report"
    argv = ["report", "--model", TINY_VIT, "--random-init", "--data", str(images), "--sae-epochs", "1", "--device", "cpu",
            "--out", str(out)]
    assert main(argv) == 0
    before = sorted(path.relative_to(out) for path in out.rglob("*"))
    assert main([*argv, "--overwrite", "--layer", "no-such-layer"]) == 2
    assert "no-such-layer" in capsys.readouterr().err
    assert sorted(path.relative_to(out) for path in out.rglob("*")) == before
