"""CAM methods vs Finer-CAM on look-alike pairs, scored in memory at pixel and patch resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.specimens.benchmark import ScoringError, read_benchmark
from traitlens.specimens.cam_localization import confusion_references, lookalike_localization
from traitlens.specimens.flips import lookalike_map
from traitlens.specimens.reliance import RelianceConfig, read_oracle_map, score_reliance

MODEL = "traitlens:specimens-vit"


def test_finer_cam_with_gamma_zero_is_the_base_method_and_chance_is_the_mask_area(
        specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    benchmark, source = read_benchmark(data), open_image_source(data)
    result = lookalike_localization(load_backbone(MODEL), source, benchmark, ("grad-cam",), gamma=0.0, batch_size=8)
    assert [row["method"] for row in result.rows] == ["Grad-CAM", "Finer-CAM (Grad-CAM, γ=0, ref: look-alike)", "chance"]
    base, finer, chance = result.rows
    assert {k: v for k, v in base.items() if k != "method"} == {k: v for k, v in finer.items() if k != "method"}
    masks = [benchmark.distinguishing_mask(benchmark.resolve(record.source)) for record in source.records]
    shown = [mask for mask in masks if mask.any()]
    assert base["n_images"] == chance["n_images"] == len(shown)
    assert chance["mass_inside"] == pytest.approx(float(np.mean([mask.mean() for mask in shown])))
    assert base["oracle_spearman"] is None and chance["oracle_spearman"] is None  # no oracle maps given
    for column in ("mass_inside", "pointing_game", "patch_mass", "patch_ap", "patch_pointing"):
        assert 0.0 <= base[column] <= 1.0 and 0.0 < chance[column] < 1.0
    # patch-level chance is the trait patches' share of the grid: larger than the pixel share
    assert chance["patch_mass"] > chance["mass_inside"]
    assert result.grid_hw == (8, 8) and result.layer == "blocks.2"


def test_finer_cam_changes_the_maps(specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    rows = lookalike_localization(load_backbone(MODEL), open_image_source(data), read_benchmark(data),
                                  ("layercam",), gamma=1.0, batch_size=8).rows
    assert rows[0]["mass_inside"] != rows[1]["mass_inside"]


def test_reference_choices_and_the_oracle_ceiling(twin_bench: Path, tmp_path: Path) -> None:
    backbone = load_backbone(MODEL)
    benchmark, source = read_benchmark(twin_bench), open_image_source(twin_bench)
    score_reliance(RelianceConfig(model=MODEL, data=twin_bench, out=tmp_path / "reliance", batch_size=16))
    oracle = {name: read_oracle_map(tmp_path / "reliance", name) for name in benchmark.image_species}
    index = {name: i for i, name in enumerate(backbone.class_names or [])}
    # confusion references that are exactly the look-alikes: their Finer-CAM is the look-alike one
    true_pairs = lookalike_map(benchmark, list(index))
    result = lookalike_localization(backbone, source, benchmark, ("grad-cam",), batch_size=16,
                                    references=("lookalike", "closest", "confusion"), confusion=true_pairs, oracle=oracle)
    methods = [row["method"] for row in result.rows]
    assert methods == ["Grad-CAM", "Finer-CAM (Grad-CAM, γ=0.6, ref: look-alike)", "Finer-CAM (Grad-CAM, γ=0.6, ref: closest logit)",
                       "Finer-CAM (Grad-CAM, γ=0.6, ref: most confused)", "chance", "oracle (ceiling)"]
    by_method = {row["method"]: row for row in result.rows}
    lookalike_row = by_method["Finer-CAM (Grad-CAM, γ=0.6, ref: look-alike)"]
    confused_row = by_method["Finer-CAM (Grad-CAM, γ=0.6, ref: most confused)"]
    assert {k: v for k, v in lookalike_row.items() if k != "method"} == {k: v for k, v in confused_row.items() if k != "method"}
    assert result.reference_agreement["confusion"] == 1.0
    assert 0.0 <= result.reference_agreement["closest"] <= 1.0
    # the oracle agrees with itself, and chance with nothing
    assert by_method["oracle (ceiling)"]["oracle_spearman"] == pytest.approx(1.0)
    assert by_method["chance"]["oracle_spearman"] == 0.0
    with pytest.raises(ScoringError, match="confusion references"):
        lookalike_localization(backbone, source, benchmark, ("grad-cam",), references=("confusion",))
    with pytest.raises(ScoringError, match="no oracle map"):
        lookalike_localization(backbone, source, benchmark, ("grad-cam",), oracle={})


def test_confusion_references_are_the_most_probable_other_class(twin_bench: Path) -> None:
    backbone = load_backbone(MODEL)
    source = open_image_source(twin_bench / "images")
    index = {name: i for i, name in enumerate(backbone.class_names or [])}
    refs = confusion_references(backbone, source, index, batch_size=16)
    assert set(refs) == {index[str(record.label)] for record in source.records}
    assert all(reference != target and 0 <= reference < len(index) for target, reference in refs.items())
