"""``traitlens specimens generate | accuracy | score`` end to end, on the embedded model and a fresh seed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz.harness import assert_refused
from traitlens.cli import main
from traitlens.specimens.benchmark import read_benchmark

FRESH_SEED = 90210
"""A seed no model or threshold was tuned on."""


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "specimens"
    assert main(["specimens", "generate", "--out", str(out), "--n-images", "64", "--seed", str(FRESH_SEED)]) == 0
    return out


def test_the_embedded_model_classifies_a_fresh_seed(bench: Path, tmp_path: Path) -> None:
    assert main(["specimens", "accuracy", "--model", "traitlens:specimens-vit", "--data", str(bench / "images"),
                 "--out", str(tmp_path / "acc")]) == 0
    result = json.loads((tmp_path / "acc" / "accuracy.json").read_text())
    assert result["n_images"] == 64
    assert sorted(result["per_class"]) == [f"sp{i:02d}" for i in range(16)]
    # the accuracy in README is measured on 1,600 images; on 64 a trained model is far above chance (1/16)
    assert result["accuracy"] >= 0.85


def test_score_discovery_on_the_embedded_models_activations(bench: Path, tmp_path: Path) -> None:
    acts, out = tmp_path / "acts", tmp_path / "discovery"
    assert main(["extract", "--model", "traitlens:specimens-vit", "--data", str(bench), "--layers", "-1",
                 "--tokens", "all", "--out", str(acts)]) == 0
    assert main(["specimens", "score", "discovery", "--acts", str(acts), "--data", str(bench), "--out", str(out),
                 "--pca-components", "8", "--kmeans-clusters", "8"]) == 0
    result = json.loads((out / "discovery.json").read_text())
    assert [row["trait"] for row in result["rows"]] == [trait["name"] for trait in result_traits(bench)]
    assert result["n_images_scored"] == 32 and result["n_patches"] == 32 * 64
    for row in result["rows"]:
        assert all(0 < row[name] <= 1 for name in ("neurons", "pca", "kmeans")) and 0 < row["chance"] < 1
    # a trained model separates traits: some trait is found by a single neuron far above chance
    assert max(row["neurons"] / row["chance"] for row in result["rows"]) > 3
    assert "| trait | positives | chance | neurons | pca | kmeans |" in (out / "discovery.md").read_text()


def result_traits(bench: Path) -> list[dict]:
    return json.loads((bench / "traits.json").read_text())["traits"]


def _write_heatmaps(bench: Path, folder: Path, perfect: bool) -> None:
    """Per look-alike image, the distinguishing trait's own mask (perfect) or a uniform map."""
    benchmark = read_benchmark(bench)
    for source, species in benchmark.image_species.items():
        labels = [benchmark.trait_labels[trait] for trait in benchmark.distinguishing_traits(species)]
        mask = np.isin(benchmark.annotation(source), labels)
        path = folder / Path(source).relative_to("images").with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, mask.astype(np.float32) if perfect else np.ones(mask.shape, np.float32))


def test_score_localization_of_perfect_and_uniform_heatmaps(bench: Path, tmp_path: Path) -> None:
    _write_heatmaps(bench, tmp_path / "perfect", perfect=True)
    _write_heatmaps(bench, tmp_path / "uniform", perfect=False)
    for name in ("perfect", "uniform"):
        assert main(["specimens", "score", "localization", "--heatmaps", str(tmp_path / name), "--data", str(bench),
                     "--out", str(tmp_path / f"{name}-scores")]) == 0
    perfect = json.loads((tmp_path / "perfect-scores" / "localization.json").read_text())["rows"][-1]
    uniform = json.loads((tmp_path / "uniform-scores" / "localization.json").read_text())["rows"][-1]
    assert perfect["trait"] == uniform["trait"] == "all"
    assert perfect["mass_inside"] == perfect["pointing_game"] == 1.0
    # a uniform map's mass inside is the mask's area fraction: chance
    assert uniform["mass_inside"] == pytest.approx(uniform["chance"]) and 0 < uniform["chance"] < 0.2
    assert perfect["n_images"] + perfect["n_empty_masks"] == 64  # every species has a look-alike


def test_finer_cam_maps_of_the_embedded_model_are_scored_against_the_trait_masks(bench: Path, tmp_path: Path) -> None:
    maps, scores = tmp_path / "maps", tmp_path / "scores"
    assert main(["explain", "--model", "traitlens:specimens-vit", "--data", str(bench / "images"), "--method", "grad-cam",
                 "--refs", "auto", "--n-refs", "1", "--out", str(maps)]) == 0
    summary = json.loads((maps / "summary.json").read_text())
    assert len(summary["images"]) == 64 and {record["target"] for record in summary["images"]} <= {f"sp{i:02d}" for i in range(16)}
    assert all(len(record["references"]) == 1 and record["image_hw"] == [96, 96] for record in summary["images"])
    assert main(["specimens", "score", "localization", "--heatmaps", str(maps), "--data", str(bench), "--out", str(scores)]) == 0
    overall = json.loads((scores / "localization.json").read_text())["rows"][-1]
    assert overall["n_images"] + overall["n_empty_masks"] == 64
    assert 0 <= overall["mass_inside"] <= 1 and 0 <= overall["pointing_game"] <= 1


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["source", "before", "after"])
        writer.writeheader()
        writer.writerows(rows)


def _write_predictions(bench: Path, path: Path) -> None:
    """Every image predicted right, before and after."""
    _write_rows(path, [{"source": source, "before": species, "after": species}
                       for source, species in read_benchmark(bench).image_species.items()])


def test_score_flips_of_a_hand_made_edit(bench: Path, tmp_path: Path) -> None:
    """Every other image turned into its look-alike, one into an unrelated species, one wrong before."""
    benchmark = read_benchmark(bench)
    partner = {pair.a: pair.b for pair in benchmark.lookalikes} | {pair.b: pair.a for pair in benchmark.lookalikes}
    rows = []
    for i, (source, species) in enumerate(sorted(benchmark.image_species.items())):
        before, after = species, partner[species] if i % 2 else species
        if i == 0:
            after = next(name for name in sorted(partner) if name not in (species, partner[species]))
        if i == 2:
            before = partner[species]
        rows.append({"source": source, "before": before, "after": after})
    _write_rows(tmp_path / "predictions.csv", rows)
    assert main(["specimens", "score", "flips", "--predictions", str(tmp_path / "predictions.csv"), "--data", str(bench),
                 "--out", str(tmp_path / "flips")]) == 0
    overall = json.loads((tmp_path / "flips" / "flips.json").read_text())["rows"][-1]
    assert overall["n_eligible"] == 63 and overall["n_flipped"] == 32 and overall["n_changed"] == 33


def test_bad_input_is_one_line_and_exit_2(bench: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "file").write_text("x")
    (inputs / "bad.csv").write_text("source,before\nimages/sp00/00000000.png,sp00\n")
    (inputs / "unknown.csv").write_text(f"source,before,after\n{read_benchmark(bench).resolve('sp00/00000000.png')},sp00,dog\n")
    cases = [
        (["specimens", "generate", "--out", str(inputs / "file"), "--n-images", "4", "--seed", "1"], "is a file"),
        (["specimens", "generate", "--out", str(out / "g"), "--n-images", "4", "--seed", "-1"], "--seed: an integer of at least 0"),
        (["specimens", "score", "discovery", "--acts", str(inputs), "--data", str(inputs), "--out", str(out / "d")],
         "no activation store"),
        (["specimens", "score", "localization", "--heatmaps", str(inputs), "--data", str(bench), "--out", str(out / "l")],
         "no heatmaps"),
        (["specimens", "score", "localization", "--heatmaps", str(inputs), "--data", str(bench), "--out", str(out / "l"),
          "--grid", "8x0"], "--grid: a patch grid such as 8x8"),
        (["specimens", "score", "localization", "--heatmaps", str(inputs), "--data", str(bench), "--out", str(out / "l"),
          "--oracle", str(inputs)], "cannot read oracle map"),
        (["specimens", "score", "flips", "--predictions", str(inputs / "bad.csv"), "--data", str(bench),
          "--out", str(out / "f")], "lack the column(s) after"),
        (["specimens", "score", "flips", "--predictions", str(inputs / "unknown.csv"), "--data", str(bench),
          "--out", str(out / "f")], "not species of the benchmark: 'dog'"),
        (["specimens", "score", "flips", "--predictions", str(inputs / "none.csv"), "--data", str(bench),
          "--out", str(out / "f")], "cannot read predictions"),
    ]
    for argv, message in cases:
        assert_refused(argv, inputs, bench, says=message)
    # the scores refused above wrote no result, so the corrected command needs no --overwrite
    _write_predictions(bench, inputs / "good.csv")
    assert main(["specimens", "score", "flips", "--predictions", str(inputs / "good.csv"), "--data", str(bench),
                 "--out", str(out / "f")]) == 0
