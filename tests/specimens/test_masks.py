"""Trait masks: one per trait (overlaps allowed), read beside the old label maps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traitlens.errors import DataError
from traitlens.specimens.benchmark import read_benchmark


def test_each_image_and_twin_has_one_mask_per_trait_holding_its_visible_pixels(twin_bench: Path) -> None:
    benchmark = read_benchmark(twin_bench)
    labels = list(benchmark.trait_labels.values())
    for source in list(benchmark.image_species)[:16]:
        masks_thw = benchmark.trait_masks(source)
        labels_hw = benchmark.annotation(source)
        assert masks_thw.shape == (len(labels), *labels_hw.shape) and masks_thw.dtype == bool
        for row, label in enumerate(labels):
            assert not bool(((labels_hw == label) & ~masks_thw[row]).any()), "a visible trait pixel is outside its mask"
        # a value that draws nothing has an empty mask, one that draws something does not
        values = benchmark.image_values[source]
        for row, trait in enumerate(benchmark.trait_labels):
            if values[trait] in ("none", "plain"):
                assert not masks_thw[row].any()
        twin = benchmark.twins[source]
        assert benchmark.trait_masks(twin).shape == masks_thw.shape


def test_image_and_twin_differ_only_inside_the_distinguishing_mask_which_both_halves_of_a_pair_have(twin_bench: Path) -> None:
    benchmark = read_benchmark(twin_bench)
    for source in benchmark.image_species:
        image = np.asarray(Image.open(twin_bench / source))
        twin = np.asarray(Image.open(twin_bench / benchmark.twins[source]))
        mask_hw = benchmark.distinguishing_mask(source)
        assert mask_hw.any(), f"{source}: the trait region is empty even for a species that lacks the trait"
        assert not bool(((image != twin).any(-1) & ~mask_hw).any())


def test_a_benchmark_without_masks_reads_its_label_maps(twin_bench: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(twin_bench, old)
    description = json.loads((old / "traits.json").read_text())
    for image in description["images"]:
        del image["masks"], image["twin_masks"], image["twin"]
    (old / "traits.json").write_text(json.dumps(description))
    shutil.rmtree(old / "masks")
    benchmark = read_benchmark(old)
    source = next(iter(benchmark.image_species))
    labels_hw = benchmark.annotation(source)
    traits = benchmark.distinguishing_traits(benchmark.image_species[source])
    assert np.array_equal(benchmark.distinguishing_mask(source), np.isin(labels_hw, [benchmark.trait_labels[t] for t in traits]))
    assert np.array_equal(benchmark.trait_masks(source)[0], labels_hw == next(iter(benchmark.trait_labels.values())))


@pytest.mark.parametrize("masks", ["masks/../../x.npy", "/etc/passwd", "annotations/sp00/00000000.png", 3])
def test_a_masks_path_other_than_the_images_own_is_refused(twin_bench: Path, tmp_path: Path, masks: object) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(twin_bench, copy)
    description = json.loads((copy / "traits.json").read_text())
    description["images"][0]["masks"] = masks
    (copy / "traits.json").write_text(json.dumps(description))
    with pytest.raises(DataError, match="masks"):
        read_benchmark(copy)


def test_a_damaged_masks_file_is_one_line(twin_bench: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(twin_bench, copy)
    benchmark = read_benchmark(copy)
    source = next(iter(benchmark.image_species))
    np.save(copy / benchmark.masks[source], np.zeros((8, 96, 96), np.uint8))
    with pytest.raises(DataError, match="bool array"):
        benchmark.trait_masks(source)
    (copy / benchmark.masks[source]).write_bytes(b"not an array")
    with pytest.raises(DataError, match="cannot read trait masks"):
        benchmark.distinguishing_mask(source)
