"""Look-alike flip rates on hand-made predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz.harness import run_cli
from traitlens.errors import DataError, TraitlensError
from traitlens.specimens.benchmark import Benchmark, read_benchmark
from traitlens.specimens.flips import lookalike_flip_rate, lookalike_map


def test_lookalike_flip_rate_on_a_hand_made_table() -> None:
    species = [0, 0, 1, 1, 2, 0]
    before = [0, 0, 1, 0, 2, 0]  # image 3 was wrong before: not eligible; species 2 has no look-alike
    after = [1, 0, 2, 1, 0, 1]
    result = lookalike_flip_rate(before, after, species, {0: 1, 1: 0})
    # eligible: images 0, 1, 2, 5; to the look-alike: 0 and 5; changed at all: 0, 2 and 5
    assert result == {"n_images": 6, "n_eligible": 4, "n_flipped": 2, "n_changed": 3, "flip_rate": 0.5, "change_rate": 0.75}
    assert lookalike_flip_rate([2], [0], [2], {0: 1})["flip_rate"] is None
    with pytest.raises(TraitlensError, match=r"\(n,\) each"):
        lookalike_flip_rate([0, 1], [0], [0, 1], {0: 1})


def test_lookalike_map_from_the_benchmark(benchmark: tuple[Path, np.ndarray]) -> None:
    bench = read_benchmark(benchmark[0])
    assert lookalike_map(bench, ["crow", "finch", "sparrow"]) == {1: 2, 2: 1}
    with pytest.raises(DataError, match="sparrow"):
        lookalike_map(bench, ["finch"])


def test_a_source_is_found_by_its_path_from_any_folder_of_the_benchmark(benchmark: tuple[Path, np.ndarray]) -> None:
    root = benchmark[0]
    bench = read_benchmark(root)
    image = "images/sparrow/002.png"
    for source in (image, "sparrow/002.png", "002.png", "./sparrow//002.png", "sparrow\\002.png", str(root.resolve() / image),
                   "/elsewhere/sparrow/002.png"):
        assert bench.resolve(source) == image, source
    # a path is the ending of an image's path or ends with one; a species folder that disagrees is no match
    for stranger in ("finch/002.png", "images/../images/sparrow/002.png", "999.png", "", "images/sparrow/002.png/x"):
        with pytest.raises(DataError, match="not an image of the benchmark"):
            bench.resolve(stranger)
    twins = Benchmark(root, bench.trait_labels, bench.lookalikes, {"images/finch/1.png": "finch", "images/sparrow/1.png": "sparrow"})
    assert twins.resolve("finch/1.png") == "images/finch/1.png"
    with pytest.raises(DataError, match="ambiguous"):
        twins.resolve("1.png")


def test_flips_of_steer_on_a_species_folder(specimens_with_sae: tuple[Path, Path], tmp_path: Path) -> None:
    """README's two steps: steer on one species' folder, then score its predictions on the benchmark."""
    data, sae = specimens_with_sae
    steered = tmp_path / "steer" / "crest"
    code, _, err = run_cli(["steer", "--model", "traitlens:specimens-vit", "--sae", str(sae), "--data", str(data / "images" / "sp01"),
                            "--target", "sp00", "--out", str(steered), "--edit", "3=40", "--edit", "5=zero"])
    assert code == 0, err
    with (steered / "predictions.csv").open(newline="") as handle:
        predicted = list(csv.DictReader(handle))
    assert len(predicted) == 2 and all("/" not in row["source"] for row in predicted)  # relative to the species folder
    code, printed, err = run_cli(["specimens", "score", "flips", "--predictions", str(steered / "predictions.csv"),
                                  "--data", str(data), "--out", str(tmp_path / "flips")])
    assert code == 0, err
    rows = {row["pair"]: row for row in json.loads((tmp_path / "flips" / "flips.json").read_text())["rows"]}
    code_of = {"sp01": 1, "sp00": 2}  # the species, its look-alike, 0 for any other class
    expected = lookalike_flip_rate([code_of.get(row["before"], 0) for row in predicted],
                                   [code_of.get(row["after"], 0) for row in predicted], [1, 1], {1: 2})
    assert rows["sp00 / sp01"] == {"pair": "sp00 / sp01", "trait": "crest", **expected} and rows["all"]["n_images"] == 2
    assert "| sp00 / sp01 | crest |" in printed
