"""Rows stored shuffled within each shard: the permutation as docs/formats.md defines it, the same
images extracted in both row orders read back identically in image order, and the manifest field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.resume import file_bytes
from traitlens.cli import main
from traitlens.errors import StoreError
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.store import ActivationStore, ExtractConfig, ShuffleConfig, extract
from traitlens.store.row_order import shuffled_row_order, stored_row_positions

MODEL = "timm:vit_tiny_patch16_224?img_size=64&patch_size=8&depth=2&embed_dim=32&num_heads=2&num_classes=3"
MASK = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK
    return value ^ (value >> 31)


@pytest.mark.parametrize(("seed", "shard", "n_rows"), [(0, 0, 10), (0, 3, 10), (7, 0, 10), (0, 2, 1000), (5, 9, 1)])
def test_the_permutation_is_the_documented_formula(seed: int, shard: int, n_rows: int) -> None:
    shard_key = _splitmix64(_splitmix64(seed) ^ shard)
    expected = sorted(range(n_rows), key=lambda row: _splitmix64(shard_key ^ row))
    order = shuffled_row_order(seed, shard, n_rows)
    assert order.tolist() == expected
    assert shuffled_row_order(0, 0, 10).tolist() == [0, 9, 1, 6, 3, 5, 4, 2, 8, 7]
    np.testing.assert_array_equal(order[stored_row_positions(seed, shard, n_rows)], np.arange(n_rows))
    assert not order.flags.writeable


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 6 specimens (with part masks) in both row orders: shards of 4 and 2 images, 2 layers."""
    root = tmp_path_factory.mktemp("row_order")
    data = generate(GenerateConfig(root / "specimens", n=6, seed=5, size=64), show_progress=False)
    extract(ExtractConfig(model=MODEL, data=data, layers=("0", "1"), out=root / "image", pretrained=False, tokens="all",
                          batch_size=3, images_per_shard=4), show_progress=False)
    assert main(["extract", "--model", MODEL, "--random-init", "--data", str(data), "--layers", "0,1", "--out",
                 str(root / "shuffled"), "--tokens", "all", "--batch-size", "3", "--images-per-shard", "4",
                 "--row-order", "shuffled"]) == 0
    return {"shuffled": root / "shuffled", "image": root / "image"}


def test_shuffled_rows_permute_each_shard_and_change_no_other_file(stores: dict[str, Path]) -> None:
    shuffled, image = ActivationStore(stores["shuffled"]), ActivationStore(stores["image"])
    assert (shuffled.manifest["row_order"], shuffled.manifest["row_order_seed"]) == ("shuffled", 0)
    assert "row_order" not in image.manifest and "row_order_seed" not in image.manifest
    assert shuffled.row_order.shuffled and not image.row_order.shuffled
    for name in image.layer_names:
        for index, (stored, by_image) in enumerate(zip(shuffled.shards(name), image.shards(name), strict=True)):
            np.testing.assert_array_equal(stored, by_image[shuffled_row_order(0, index, len(by_image))])
            assert not np.array_equal(stored, by_image)
    # statistics (summed before the rows are permuted), shard records and patch labels: same bytes
    same = {path for path in file_bytes(stores["image"]) if "/acts_" not in path and path not in ("job.json", "manifest.json")}
    assert any("patch_labels" in path for path in same) and any("stats.json" in path for path in same)
    assert {path: file_bytes(stores["shuffled"])[path] for path in same} == {path: file_bytes(stores["image"])[path] for path in same}
    jobs = [json.loads((stores[order] / "job.json").read_text()) for order in ("shuffled", "image")]
    assert jobs[0].pop("row_order") == "shuffled" and jobs[1].pop("row_order") == "image" and jobs[0] == jobs[1]


def test_image_order_readers_read_the_same_tokens_from_both(stores: dict[str, Path]) -> None:
    shuffled, image = ActivationStore(stores["shuffled"]), ActivationStore(stores["image"])
    for name in image.layer_names:
        for (images_a, tokens_a), (images_b, tokens_b) in zip(shuffled.iter_images(name), image.iter_images(name), strict=True):
            np.testing.assert_array_equal(images_a, images_b)
            np.testing.assert_array_equal(tokens_a, tokens_b)
        for index in range(image.n_images):
            np.testing.assert_array_equal(shuffled.image_tokens(name, index), image.image_tokens(name, index))
        for a, b in zip(shuffled.image_ordered_shards(name), image.image_ordered_shards(name), strict=True):
            np.testing.assert_array_equal(a[3:70], b[3:70])
        assert shuffled.compute_stats(name).to_dict() == image.compute_stats(name).to_dict()
        assert shuffled.stats(name).to_dict() == image.stats(name).to_dict()
        np.testing.assert_array_equal(shuffled.patch_labels(name), image.patch_labels(name))


def test_training_reads_runs_from_shuffled_rows_only(stores: dict[str, Path]) -> None:
    config = ShuffleConfig(batch_size=64)
    assert ActivationStore(stores["shuffled"]).shuffled(0, config).mode == "runs"
    assert ActivationStore(stores["image"]).shuffled(0, config).mode == "uniform"
    exact = ShuffleConfig(batch_size=64, mode="uniform")
    assert ActivationStore(stores["shuffled"]).shuffled(0, exact).mode == "uniform"


def _with_manifest(source: Path, target: Path, **changes: object) -> Path:
    """A copy of the store ``source`` whose manifest has ``changes`` (a None value removes the field)."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_image_order_is_written_as_version_1_and_version_2_may_name_it(stores: dict[str, Path], tmp_path: Path) -> None:
    """Stores in image order stay version 1, readable by a traitlens older than row orders."""
    assert ActivationStore(stores["image"]).manifest["version"] == 1
    assert ActivationStore(stores["shuffled"]).manifest["version"] == 2
    named = ActivationStore(_with_manifest(stores["image"], tmp_path / "named", version=2, row_order="image"))
    assert named.row_order.name == "image"
    np.testing.assert_array_equal(named.image_tokens(1, 5), ActivationStore(stores["image"]).image_tokens(1, 5))


@pytest.mark.parametrize(("source", "changes", "says"), [
    ("shuffled", {"row_order": "diagonal"}, "row_order is \"diagonal\", expected one of image, shuffled"),
    ("shuffled", {"row_order": None}, "row_order is missing"),
    ("shuffled", {"row_order": "image"}, "row_order_seed is given, but rows are in image order"),
    ("shuffled", {"row_order_seed": 2**64}, "row order seed is an integer in"),
    ("image", {"row_order": "image"}, "row_order is a version 2 field"),
    ("shuffled", {"row_order_seed": None}, "row_order_seed is missing"),
    ("shuffled", {"row_order_seed": -1}, "row_order_seed is -1"),
    ("shuffled", {"version": 1}, "row_order is a version 2 field"),
    ("image", {"version": 3}, "reads versions 1 and 2"),
])
def test_a_bad_row_order_is_one_line(stores: dict[str, Path], tmp_path: Path, source: str, changes: dict[str, object],
                                     says: str) -> None:
    with pytest.raises(StoreError, match=says) as raised:
        ActivationStore(_with_manifest(stores[source], tmp_path / "bad", **changes))
    assert "\n" not in str(raised.value)


def test_a_bad_row_order_in_the_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="row order must be one of image, shuffled"):
        ExtractConfig(model=MODEL, data=tmp_path, layers=("0",), out=tmp_path / "acts", row_order="random")  # type: ignore[arg-type]
