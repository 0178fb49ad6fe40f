"""Counterfactual twins: a species and its look-alike drawn from the same generator state are the
same organism in the same scene, differing only inside the separating trait's footprint."""

from __future__ import annotations

import numpy as np
import pytest

from traitlens.specimens.catalog import LOOKALIKES, SPECIES, TRAITS, trait_label
from traitlens.specimens.render import render_specimen

_BY_NAME = {species.name: species for species in SPECIES}


@pytest.mark.parametrize("pair", LOOKALIKES, ids=lambda pair: pair.trait)
def test_twins_differ_exactly_inside_the_trait(pair) -> None:
    trait = [t.name for t in TRAITS].index(pair.trait)
    for index in range(12):
        image = render_specimen(_BY_NAME[pair.a], 96, np.random.default_rng([11, index]), twin_safe=True)
        twin = render_specimen(_BY_NAME[pair.b], 96, np.random.default_rng([11, index]), twin_safe=True)
        footprint = image.footprints_thw[trait] | twin.footprints_thw[trait]
        differs = (image.image_hw3 != twin.image_hw3).any(2)
        assert differs.any()
        assert not (differs & ~footprint).any(), f"pixels outside the {pair.trait} footprint changed"
        # every other trait's footprint, and every label outside this trait, are shared
        others = [t for t in range(len(TRAITS)) if t != trait]
        assert (image.footprints_thw[others] == twin.footprints_thw[others]).all()
        relabelled = image.labels_hw != twin.labels_hw
        assert not (relabelled & ~footprint).any()
        # the visible trait is inside its footprint
        assert not ((image.labels_hw == trait_label(trait)) & ~image.footprints_thw[trait]).any()


def test_framed_by_itself_a_species_leaves_a_trace_in_the_scene() -> None:
    # the default framing fits the pose to the organism's own extent, so a look-alike pair whose
    # trait changes the extent (forked vs round tail) is drawn in different poses from one state
    tail = next(pair for pair in LOOKALIKES if pair.trait == "tail")
    moved = 0
    for index in range(20):
        image = render_specimen(_BY_NAME[tail.a], 96, np.random.default_rng([11, index]))
        twin = render_specimen(_BY_NAME[tail.b], 96, np.random.default_rng([11, index]))
        trait = [t.name for t in TRAITS].index("tail")
        footprint = image.footprints_thw[trait] | twin.footprints_thw[trait]
        moved += int(((image.image_hw3 != twin.image_hw3).any(2) & ~footprint).any())
    assert moved > 0


def test_a_presence_trait_absent_has_an_empty_footprint() -> None:
    plain = next(species for species in SPECIES if species.trait_values()["crest"] == "none")
    specimen = render_specimen(plain, 64, np.random.default_rng(0))
    assert not specimen.footprints_thw[0].any()


def test_generate_twins_writes_each_images_look_alike_in_the_same_scene(twin_bench, tmp_path) -> None:
    import json

    from PIL import Image

    from traitlens.data import open_image_source
    from traitlens.specimens.benchmark import read_benchmark
    from traitlens.specimens.generate import GenerateConfig, generate

    benchmark = read_benchmark(twin_bench)
    assert len(benchmark.twins) == 32
    for source, twin in benchmark.twins.items():
        species = benchmark.image_species[source]
        pair = benchmark.lookalike(species)
        assert twin.split("/")[2] == (pair.b if species == pair.a else pair.a)
        trait = [t.name for t in TRAITS].index(pair.trait)
        image = np.asarray(Image.open(twin_bench / source))
        twin_image = np.asarray(Image.open(twin_bench / twin))
        labels = np.asarray(Image.open(twin_bench / source.replace("images/", "annotations/", 1)))
        twin_labels = np.asarray(Image.open(twin_bench / twin.replace("twins/images/", "twins/annotations/", 1)))
        changed = (image != twin_image).any(2)
        assert changed.any()
        # outside the two label maps' trait pixels (and what borders them), nothing moved
        trait_pixels = (labels == trait_label(trait)) | (twin_labels == trait_label(trait))
        from scipy.ndimage import binary_dilation

        assert not (changed & ~binary_dilation(trait_pixels, np.ones((3, 3)), iterations=2)).any()
    # the twins folder is a segmentation folder of its own; without twins, images are framed as before
    assert open_image_source(twin_bench / "twins").kind == "segmentation"
    plain = generate(GenerateConfig(tmp_path / "plain", n=32, seed=4), show_progress=False)
    assert "twin" not in json.loads((plain / "traits.json").read_text())["images"][0]
    assert read_benchmark(plain).twins == {}


def test_score_reliance_counts_twin_flips_and_writes_oracle_maps(twin_bench, tmp_path) -> None:
    import json

    from tests.fuzz.harness import assert_refused, run_cli

    code, out, err = run_cli(["specimens", "score", "reliance", "--model", "traitlens:specimens-vit",
                              "--data", str(twin_bench), "--out", str(tmp_path / "reliance")])
    assert code == 0, err
    summary = json.loads((tmp_path / "reliance" / "reliance.json").read_text())
    total = summary["pairs"][-1]
    assert total["n_images"] == 32 and 0 <= total["n_to_lookalike"] <= total["n_correct"] <= 32
    assert "| all |" in out
    oracle = np.load(tmp_path / "reliance" / "oracle" / "sp01" / "00000001.npy")
    assert oracle.shape == tuple(summary["grid_hw"]) and np.count_nonzero(oracle) > 0
    plain = tmp_path / "plain"
    from traitlens.specimens.generate import GenerateConfig, generate

    generate(GenerateConfig(plain, n=16, seed=4), show_progress=False)
    assert_refused(["specimens", "score", "reliance", "--model", "traitlens:specimens-vit", "--data", str(plain),
                    "--out", str(tmp_path / "never")], plain, says="--twins")
    assert not (tmp_path / "never").exists()
