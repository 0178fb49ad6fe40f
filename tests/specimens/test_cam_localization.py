"""Grad-CAM vs Finer-CAM on look-alike pairs, scored in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.cam_localization import lookalike_localization


def test_finer_cam_with_gamma_zero_is_the_base_method_and_chance_is_the_mask_area(
        specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    benchmark, source = read_benchmark(data), open_image_source(data)
    rows = lookalike_localization(load_backbone("traitlens:specimens-vit"), source, benchmark, ("grad-cam",), gamma=0.0,
                                  batch_size=8)
    assert [row["method"] for row in rows] == ["Grad-CAM", "Finer-CAM (Grad-CAM, γ=0)"]
    base, finer = rows
    assert {k: v for k, v in base.items() if k != "method"} == {k: v for k, v in finer.items() if k != "method"}
    masks = [benchmark.distinguishing_mask(benchmark.resolve(record.source)) for record in source.records]
    shown = [mask for mask in masks if mask.any()]
    assert base["n_images"] == len(shown)
    assert base["chance"] == pytest.approx(float(np.mean([mask.mean() for mask in shown])))
    assert 0.0 <= base["mass_inside"] <= 1.0


def test_finer_cam_changes_the_maps(specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    rows = lookalike_localization(load_backbone("traitlens:specimens-vit"), open_image_source(data), read_benchmark(data),
                                  ("layercam",), gamma=1.0, batch_size=8)
    assert rows[0]["mass_inside"] != rows[1]["mass_inside"]
