"""The specimens benchmark: catalog rules, faithful label maps, deterministic and resumable output."""

from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label as connected_components

from tests.resume import file_bytes
from traitlens.data import open_image_source
from traitlens.errors import DataError
from traitlens.specimens.catalog import (
    LOOKALIKES,
    SPECIES,
    TRAITS,
    catalog_dict,
    label_names,
    trait_differences,
    trait_label,
)
from traitlens.specimens.generate import JOB_FILE, GenerateConfig, generate
from traitlens.specimens.render import MAX_OCCLUDED_FRACTION, render_specimen

N_IMAGES = 40
SEED = 3


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(GenerateConfig(tmp_path_factory.mktemp("bench") / "out", n=N_IMAGES, seed=SEED),
                    show_progress=False)


@pytest.fixture(scope="module")
def description(bench: Path) -> dict:
    return json.loads((bench / "traits.json").read_text())


# -- catalog ---------------------------------------------------------------------------------------


def test_catalog_has_enough_traits_and_species() -> None:
    assert len(TRAITS) >= 8 and len(SPECIES) >= 16
    assert len({trait.kind for trait in TRAITS}) >= 2
    assert len({trait.part for trait in TRAITS}) == len(TRAITS)
    assert len({species.name for species in SPECIES}) == len(SPECIES)
    assert len({species.values for species in SPECIES}) == len(SPECIES)
    assert len({species.plan for species in SPECIES}) >= 2


def test_lookalikes_differ_in_exactly_their_trait_and_cover_every_trait() -> None:
    by_name = {species.name: species for species in SPECIES}
    for pair in LOOKALIKES:
        assert trait_differences(by_name[pair.a], by_name[pair.b]) == [pair.trait]
        assert by_name[pair.a].plan == by_name[pair.b].plan
    assert {pair.trait for pair in LOOKALIKES} == {trait.name for trait in TRAITS}
    # every species has exactly one look-alike, and all other species are further away
    assert sorted(name for pair in LOOKALIKES for name in (pair.a, pair.b)) == sorted(by_name)
    pairs = {frozenset((pair.a, pair.b)) for pair in LOOKALIKES}
    for a, b in combinations(SPECIES, 2):
        if frozenset((a.name, b.name)) not in pairs:
            assert len(trait_differences(a, b)) >= 2, (a.name, b.name)


def test_catalog_dict_is_json_and_labels_follow_trait_order() -> None:
    data = json.loads(json.dumps(catalog_dict()))
    assert [trait["label"] for trait in data["traits"]] == [trait_label(i) for i in range(len(TRAITS))]
    assert label_names() == ["background", "body", *(trait["name"] for trait in data["traits"])]
    assert len(data["species"]) == len(SPECIES) and len(data["lookalikes"]) == len(LOOKALIKES)


# -- rendering -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[tuple[int, object]]:
    """Ten renders of every species at 96 px."""
    return [(index, render_specimen(SPECIES[index % len(SPECIES)], 96, np.random.default_rng([7, index])))
            for index in range(10 * len(SPECIES))]


def test_render_is_a_function_of_the_generator_state() -> None:
    first, second = (render_specimen(SPECIES[5], 64, np.random.default_rng([1, 2])) for _ in range(2))
    assert np.array_equal(first.image_hw3, second.image_hw3)
    assert np.array_equal(first.labels_hw, second.labels_hw)
    for size in (32, 100):
        specimen = render_specimen(SPECIES[0], size, np.random.default_rng(0))
        assert specimen.image_hw3.shape == (size, size, 3) and specimen.image_hw3.dtype == np.uint8
        assert specimen.labels_hw.shape == (size, size) and specimen.labels_hw.dtype == np.uint8


def test_label_maps_hold_exactly_the_drawn_traits(rendered: list) -> None:
    for index, specimen in rendered:
        species = SPECIES[index % len(SPECIES)]
        present = set(np.unique(specimen.labels_hw).tolist())
        assert present <= set(range(len(label_names())))
        assert 1 in present
        for trait_index, (trait, value) in enumerate(zip(TRAITS, species.values, strict=True)):
            # occluders never hide a whole trait, so a drawn trait is always visible
            assert (trait_label(trait_index) in present) == trait.is_drawn(value), (index, trait.name, value)


def test_organism_is_one_piece_and_occlusion_stays_small(rendered: list) -> None:
    fractions = np.array([specimen.occluded_fraction for _, specimen in rendered])
    assert np.all(fractions <= MAX_OCCLUDED_FRACTION)
    assert 0.2 < np.mean(fractions > 0) < 0.8
    for _, specimen in rendered:
        if specimen.occluded_fraction == 0:
            # every trait pixel is part of the organism: traits attach to the body, none floats free
            assert connected_components(specimen.labels_hw > 0, connectivity=2).max() == 1


def test_trait_pixels_show_the_trait_colour(rendered: list) -> None:
    """The label map lines up with the image, and colour jitter never turns red into blue."""
    band = trait_label([trait.name for trait in TRAITS].index("wing_band"))
    spots = trait_label([trait.name for trait in TRAITS].index("wing_spots"))
    for index, specimen in rendered:
        image = specimen.image_hw3.astype(float)
        red, _, blue = image[specimen.labels_hw == band].mean(axis=0)
        assert (red > blue + 40) == (SPECIES[index % len(SPECIES)].trait_values()["wing_band"] == "red")
        if np.any(specimen.labels_hw == spots):
            assert image[specimen.labels_hw == spots].mean() > image[specimen.labels_hw == 1].mean() + 30


# -- the benchmark folder --------------------------------------------------------------------------


def test_benchmark_description(bench: Path, description: dict) -> None:
    assert {key: description[key] for key in ("format", "version", "seed", "size", "n")} == {
        "format": "traitlens.specimens", "version": 1, "seed": SEED, "size": 96, "n": N_IMAGES}
    assert {key: description[key] for key in ("traits", "species", "lookalikes")} == catalog_dict()
    assert (bench / "names.txt").read_text().splitlines() == label_names()
    species = {entry["name"]: entry for entry in description["species"]}
    for index, image in enumerate(description["images"]):
        assert image["source"] == f"images/{image['species']}/{index:08d}.png"
        assert image["species"] == SPECIES[index % len(SPECIES)].name
        assert image["traits"] == species[image["species"]]["traits"]
        assert 0 <= image["occluded_fraction"] <= MAX_OCCLUDED_FRACTION
        assert (bench / image["source"]).is_file()
    # the images' recorded traits tell each look-alike pair apart by exactly its trait
    traits_of = {image["species"]: image["traits"] for image in description["images"]}
    for pair in description["lookalikes"]:
        a, b = traits_of[pair["a"]], traits_of[pair["b"]]
        assert [name for name in a if a[name] != b[name]] == [pair["trait"]]


def test_benchmark_reads_back_as_class_and_segmentation_folders(bench: Path, description: dict) -> None:
    classes = open_image_source(bench / "images")
    assert classes.kind == "class_folder" and len(classes) == N_IMAGES
    assert classes.class_names == sorted(species.name for species in SPECIES)
    segmentation = open_image_source(bench)
    assert segmentation.kind == "segmentation" and len(segmentation) == N_IMAGES
    assert segmentation.mask_names == (bench / "names.txt").read_text().splitlines()
    traits_of = {image["source"]: image["traits"] for image in description["images"]}
    for index, record in enumerate(segmentation.records):
        mask = segmentation.load_mask(index)
        assert mask is not None and mask.shape == (96, 96)
        assert np.array_equal(mask, np.asarray(Image.open(bench / "annotations" / record.source.removeprefix("images/"))))
        assert record.label == record.source.split("/")[1]
        drawn = {trait_label(i) for i, trait in enumerate(TRAITS) if trait.is_drawn(traits_of[record.source][trait.name])}
        assert set(np.unique(mask).tolist()) == {0, 1, *drawn}
        assert segmentation.load_image(index).size == (96, 96)


def test_scoring_reads_the_benchmark(bench: Path, description: dict) -> None:
    from traitlens.specimens.benchmark import read_benchmark

    benchmark = read_benchmark(bench)
    assert len(benchmark.image_species) == N_IMAGES and len(benchmark.lookalikes) == len(LOOKALIKES)
    source = description["images"][0]["source"]
    assert benchmark.annotation(source).shape == (96, 96)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d["species"][3].update(plan="beetle"), "species 3: unknown plan 'beetle'"),
    (lambda d: d["traits"][0].update(kind="texture"), "trait 0: unknown kind 'texture'"),
    (lambda d: d["traits"][2].update(label=1), "label 1 is outside 2..255"),
    (lambda d: d["traits"][2].update(label=d["traits"][1]["label"]), "trait label 3 is listed twice"),
    (lambda d: d["species"][0]["traits"].update(crest="huge"), "species 0: trait crest has unknown value 'huge'"),
    (lambda d: d["lookalikes"][0].update(trait="wings"), "look-alike pair 0: unknown trait 'wings'"),
    (lambda d: d["lookalikes"][0].update(b=d["lookalikes"][0]["a"]), "pairs sp00 with itself"),
    (lambda d: d["images"][1].update(source="images/../../secret.png"), "image 1: source 'images/../../secret.png' is not"),
    (lambda d: d["images"][1].update(source="/etc/passwd"), "is not a path images/... inside the benchmark"),
    (lambda d: d["images"][1].update(source=d["images"][0]["source"]), "is listed twice"),
    (lambda d: d["images"][1].update(species="sp99"), "image 1: unknown species 'sp99'"),
    (lambda d: d["images"][1].update(occluded_fraction=2.0), "occluded_fraction must be in [0, 1]"),
    (lambda d: d.update(n=d["n"] + 1), "images are listed"),
    (lambda d: d.update(version=True), "version True is not int"),
    (lambda d: d.update(format="traitlens.store"), "not a traitlens specimens description"),
])
def test_a_damaged_description_is_one_line(bench: Path, description: dict, tmp_path: Path, damage: object, message: str) -> None:
    from traitlens.specimens.benchmark import read_benchmark

    damaged = json.loads(json.dumps(description))
    damage(damaged)  # type: ignore[operator]
    (tmp_path / "traits.json").write_text(json.dumps(damaged))
    with pytest.raises(DataError, match="damaged benchmark description") as caught:
        read_benchmark(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# -- determinism, resuming, bad input --------------------------------------------------------------


def test_same_config_gives_identical_bytes_whatever_the_threads(bench: Path, tmp_path: Path) -> None:
    again = generate(GenerateConfig(tmp_path / "out", n=N_IMAGES, seed=SEED, workers=1), show_progress=False)
    assert file_bytes(again) == file_bytes(bench)


def test_an_image_does_not_depend_on_n(bench: Path, tmp_path: Path) -> None:
    small = generate(GenerateConfig(tmp_path / "out", n=5, seed=SEED), show_progress=False)
    small_files = {path: data for path, data in file_bytes(small).items() if path.startswith(("images/", "annotations/"))}
    assert len(small_files) == 10
    assert all(file_bytes(bench)[path] == data for path, data in small_files.items())
    assert json.loads((small / "traits.json").read_text())["images"] == \
        json.loads((bench / "traits.json").read_text())["images"][:5]


def test_different_seeds_give_different_images(bench: Path, tmp_path: Path) -> None:
    other = generate(GenerateConfig(tmp_path / "out", n=len(SPECIES), seed=SEED + 1), show_progress=False)
    other_files, bench_files = file_bytes(other), file_bytes(bench)
    images = [path for path in other_files if path.startswith("images/")]
    assert len(images) == len(SPECIES)
    assert all(other_files[path] != bench_files[path] for path in images)


def test_interrupted_run_resumes_to_identical_bytes(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(bench, out)
    (out / "traits.json").unlink()
    sources = [image["source"] for image in json.loads((bench / "traits.json").read_text())["images"]]
    for source in sources[3:9]:
        (out / source).unlink()
    (out / "annotations" / sources[12].removeprefix("images/")).unlink()
    (out / (sources[3] + ".tmp")).write_bytes(b"half a png")
    generate(GenerateConfig(out, n=N_IMAGES, seed=SEED), show_progress=False)
    assert file_bytes(out) == file_bytes(bench)


def test_a_different_config_on_the_same_folder_is_refused(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(bench, out)
    (out / "traits.json").unlink()
    for changes in ({"n": N_IMAGES + 1}, {"seed": SEED + 1}, {"size": 64}):
        options = {"n": N_IMAGES, "seed": SEED, **changes}
        with pytest.raises(DataError) as error:
            generate(GenerateConfig(out, **options), show_progress=False)
        assert "\n" not in str(error.value)
        name, value = next(iter(changes.items()))
        assert f"{name}=" in str(error.value) and f"this run: {value}" in str(error.value)
    assert not (out / "traits.json").exists()


def test_a_finished_benchmark_is_left_as_it_is(bench: Path) -> None:
    before = file_bytes(bench)
    assert generate(GenerateConfig(bench, n=N_IMAGES, seed=SEED), show_progress=False) == bench
    assert file_bytes(bench) == before


@pytest.mark.parametrize("options", [{"n": 0}, {"n": 10**8 + 1}, {"size": 16}, {"size": 4096},
                                     {"seed": -1}, {"workers": 0}])
def test_bad_settings_are_data_errors(tmp_path: Path, options: dict) -> None:
    with pytest.raises(DataError):
        GenerateConfig(tmp_path, **{"n": 4, "seed": 0, **options})


def test_a_folder_with_other_content_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate(GenerateConfig(tmp_path, n=2, seed=0), show_progress=False)
    with pytest.raises(DataError, match="is a file"):
        generate(GenerateConfig(tmp_path / "notes.txt", n=2, seed=0), show_progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    generate(GenerateConfig(tmp_path / "empty", n=2, seed=0), show_progress=False)
    assert (tmp_path / "empty" / JOB_FILE).is_file() and (tmp_path / "empty" / "traits.json").is_file()


def test_saturation_fades_the_photographs_and_nothing_else(tmp_path: Path) -> None:
    generate(GenerateConfig(out=tmp_path / "colour", n=4, seed=3, size=48), show_progress=False)
    generate(GenerateConfig(out=tmp_path / "gray", n=4, seed=3, size=48, saturation=0.0), show_progress=False)
    generate(GenerateConfig(out=tmp_path / "faded", n=4, seed=3, size=48, saturation=0.5), show_progress=False)
    colour, gray = (file_bytes(tmp_path / name) for name in ("colour", "gray"))
    images = [name for name in colour if name.startswith("images/")]
    for name in images:
        rgb, gray_hw3, faded_hw3 = (np.asarray(Image.open(tmp_path / folder / name), dtype=np.int16)
                                    for folder in ("colour", "gray", "faded"))
        assert (gray_hw3 == gray_hw3[..., :1]).all() and not (rgb == rgb[..., :1]).all()
        assert np.abs(faded_hw3 - (rgb + gray_hw3) / 2).max() <= 1  # halfway between the colour and the luminance
    # the masks and label maps are the colour benchmark's
    assert all(gray[name] == colour[name] for name in colour if name.startswith(("masks/", "annotations/")))
    assert json.loads(gray[JOB_FILE])["saturation"] == 0.0 and "saturation" not in json.loads(colour[JOB_FILE])
    with pytest.raises(DataError, match="--saturation"):
        GenerateConfig(out=tmp_path / "bad", n=4, seed=3, saturation=1.5)
