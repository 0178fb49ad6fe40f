"""Localization scores on hand-made heatmaps and masks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.specimens.hand_made_benchmark import N_IMAGES
from traitlens.errors import DataError, TraitlensError
from traitlens.specimens.benchmark import ScoringError, read_benchmark
from traitlens.specimens.localization import LocalizationConfig, localization_scores, score_localization
from traitlens.specimens.patch_scores import pool_to_grid
from traitlens.specimens.reliance import ORACLE_DIR


def test_localization_of_inside_half_and_empty_cases() -> None:
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True
    masks[1, :, :2] = True
    heat = np.zeros((3, 4, 4), np.float32)
    heat[0, 0, 1] = 2.0  # all inside
    heat[1, 1, 1], heat[1, 1, 3] = 3.0, 3.0  # half inside, tie at the maximum goes to (1, 1): inside
    heat[2] = 1.0  # empty mask: left out and counted
    scores = localization_scores(heat, masks)
    assert scores == {"n_images": 2, "n_empty_masks": 1, "mass_inside": 0.75, "pointing_game": 1.0, "chance": 0.5}
    heat[1, 1, 1] = 1.0  # now the maximum is outside, one pixel from the mask
    assert localization_scores(heat, masks)["pointing_game"] == 0.5
    assert localization_scores(heat, masks, tolerance=2)["pointing_game"] == 1.0
    assert localization_scores(heat[2:], masks[2:])["mass_inside"] is None


def test_a_blank_heatmap_localizes_nothing_and_bad_maps_fail() -> None:
    masks = np.ones((1, 3, 3), bool)
    assert localization_scores(np.zeros((1, 3, 3)), masks)["mass_inside"] == 0.0
    assert localization_scores(np.zeros((1, 3, 3)), masks)["pointing_game"] == 0.0
    with pytest.raises(TraitlensError, match="non-negative"):
        localization_scores(-np.ones((1, 3, 3)), masks)
    with pytest.raises(TraitlensError, match=r"\(n, H, W\)"):
        localization_scores(np.ones((1, 3, 4)), masks)
    with pytest.raises(TraitlensError, match="boolean"):
        localization_scores(np.ones((1, 3, 3)), masks.astype(np.uint8))


def test_score_localization_reads_heatmaps_per_image(benchmark: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data, _ = benchmark
    bench = read_benchmark(data)
    for source, species in itertools.islice(bench.image_species.items(), 4):
        ring = bench.annotation(source) == 2
        heatmap = ring.astype(np.float32) if source.endswith(("000.png", "001.png")) else (~ring).astype(np.float32)
        path = tmp_path / "heat" / species / f"{Path(source).stem}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, heatmap)
        (tmp_path / "flat").mkdir(exist_ok=True)
        np.save(tmp_path / "flat" / path.name, heatmap)
    assert score_localization(LocalizationConfig(tmp_path / "flat", data, tmp_path / "out"))["rows"][1]["mass_inside"] == 0.5
    result = score_localization(LocalizationConfig(tmp_path / "heat", data, tmp_path / "out"))
    assert result["n_missing_heatmaps"] == N_IMAGES - 4
    assert [row["trait"] for row in result["rows"]] == ["eye_ring", "all"]
    assert result["rows"][1]["mass_inside"] == 0.5 and result["rows"][1]["pointing_game"] == 0.5
    assert "| eye_ring | 4 | 0 | 0.500 | 0.500 |" in (tmp_path / "out" / "localization.md").read_text()
    with pytest.raises(DataError, match="no heatmaps"):
        score_localization(LocalizationConfig(tmp_path / "empty", data, tmp_path / "out"))


def _write(folder: Path, source: str, array: np.ndarray) -> None:
    path = folder / Path(source).relative_to("images").with_suffix(".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def test_heatmap_files_are_scored_per_patch_and_against_the_oracle(benchmark: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """On a 12x18 grid of 2x2-pixel cells every cell the 2x2 eye ring touches is a trait patch
    (half covered), so the ring's own map scores perfectly and its complement scores nothing; an
    oracle equal to the pooled ring correlates +1 with the first and -1 with the second."""
    data, _ = benchmark
    bench = read_benchmark(data)
    oracle = tmp_path / "reliance"
    for source in itertools.islice(bench.image_species, 4):
        ring = (bench.annotation(source) == 2).astype(np.float32)
        _write(tmp_path / "ring", source, ring)
        _write(tmp_path / "outside", source, 1 - ring)
        _write(oracle / ORACLE_DIR, source, pool_to_grid(ring[None], (12, 18))[0].numpy().astype(np.float32))
    ring_row = score_localization(LocalizationConfig(tmp_path / "ring", data, tmp_path / "a", oracle=oracle))["rows"][-1]
    outside = score_localization(LocalizationConfig(tmp_path / "outside", data, tmp_path / "b", grid_hw=(12, 18), oracle=oracle))
    outside_row = outside["rows"][-1]
    assert outside["grid_hw"] == [12, 18]  # the oracle's grid is the default
    assert ring_row["patch_mass"] == ring_row["patch_ap"] == ring_row["patch_pointing"] == 1.0
    assert ring_row["oracle_spearman"] == pytest.approx(1.0) and outside_row["oracle_spearman"] == pytest.approx(-1.0)
    assert outside_row["patch_pointing"] == 0.0 and outside_row["patch_mass"] < outside_row["patch_chance"]
    assert 0 < ring_row["patch_chance"] < ring_row["patch_pointing_chance"] < 1
    assert "| oracle_spearman |" in (tmp_path / "a" / "localization.md").read_text()
    without_oracle = score_localization(LocalizationConfig(tmp_path / "ring", data, tmp_path / "c", grid_hw=(12, 18)))["rows"][-1]
    assert without_oracle["patch_ap"] == 1.0 and without_oracle["oracle_spearman"] is None
    assert "oracle_spearman" not in (tmp_path / "c" / "localization.md").read_text()
    with pytest.raises(ScoringError, match="not the --grid 3x3"):
        score_localization(LocalizationConfig(tmp_path / "ring", data, tmp_path / "d", grid_hw=(3, 3), oracle=oracle))


def test_pooling_to_cells_averages_each_cell() -> None:
    heatmap = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    np.testing.assert_array_equal(pool_to_grid(heatmap, (2, 3))[0], [[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]])
    # cells of unequal size (the oracle's rule): 5 rows into 2 cells are rows 0-1 and 2-4
    assert pool_to_grid(np.arange(5, dtype=np.float32)[None, :, None], (2, 1))[0].tolist() == [[0.5], [3.0]]
