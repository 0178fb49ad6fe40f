from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fuzz.harness import run_cli
from tests.store.conftest import TINY_VIT, write_image
from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.errors import DataError, LayerError, StoreError
from traitlens.store import (
    ActivationStore,
    ExtractConfig,
    ShuffleConfig,
    extract,
    store_from_arrays,
)
from traitlens.store.files import MANIFEST


def _config(data: Path, out: Path, **overrides: object) -> ExtractConfig:
    base: dict[str, object] = dict(model=TINY_VIT, data=data, layers=("0", "-1"), out=out, pretrained=False,
                                   batch_size=4, images_per_shard=4)
    base.update(overrides)
    return ExtractConfig(**base)  # type: ignore[arg-type]


def test_corrupt_image_is_skipped_listed_and_rows_are_exact(folder_with_corrupt: Path, tmp_path: Path) -> None:
    manifest = extract(_config(folder_with_corrupt, tmp_path / "acts"), show_progress=False)
    assert manifest["n_images"] == 9 and manifest["n_skipped"] == 1
    assert manifest["skipped"][0]["source"] == "bee/broken.png"
    store = ActivationStore(tmp_path / "acts")
    for name in ("blocks.0", "blocks.1"):
        layer = store.layer(name)
        assert layer.tokens_per_image == 4  # 32 px / 16 px patches = 2x2 grid, patch tokens only
        rows = sum(len(shard) for shard in store.shards(name))
        assert rows == layer.n_tokens == 9 * 4
    assert [image.label for image in store.images] == ["ant"] * 3 + ["bee"] * 3 + ["cat"] * 3


def test_strict_stops_at_the_corrupt_image(folder_with_corrupt: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"broken\.png.*--strict"):
        extract(_config(folder_with_corrupt, tmp_path / "acts", strict=True), show_progress=False)


def test_stored_tokens_equal_the_models_tokens(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "acts", tokens="all", dtype="float32"), show_progress=False)
    store = ActivationStore(tmp_path / "acts")
    backbone = load_backbone(TINY_VIT, pretrained=False)
    source = open_image_source(class_folder)
    pixels = torch.stack([backbone.preprocess.image(source.load_image(i)) for i in (2, 7)])
    tokens = backbone.tokens(pixels, ["blocks.1"])["blocks.1"]
    assert store.image_tokens("blocks.1", 2).shape == (5, 32)
    np.testing.assert_allclose(store.image_tokens("blocks.1", 2), tokens[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(store.image_tokens(-1, 7), tokens[1].numpy(), atol=1e-5)
    indices, acts_ntd = zip(*store.iter_images("blocks.1"), strict=True)
    assert np.concatenate(indices).tolist() == list(range(9))
    np.testing.assert_array_equal(np.concatenate(acts_ntd)[7], store.image_tokens("blocks.1", 7))


def test_stats_match_a_recomputation_and_numpy(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "acts"), show_progress=False)
    store = ActivationStore(tmp_path / "acts")
    saved, recomputed = store.stats("blocks.0"), store.compute_stats("blocks.0")
    all_nd = np.concatenate([np.asarray(s, dtype=np.float64) for s in store.shards("blocks.0")])
    np.testing.assert_allclose(saved.mean_d, all_nd.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(saved.std_d, all_nd.std(0), rtol=1e-6)
    assert saved.mean_norm == pytest.approx(np.linalg.norm(all_nd, axis=1).mean())
    np.testing.assert_allclose(recomputed.mean_d, saved.mean_d)
    assert saved.count == recomputed.count == 36


def test_manifest_describes_the_job(class_folder: Path, tmp_path: Path) -> None:
    manifest = extract(_config(class_folder, tmp_path / "acts"), show_progress=False)
    on_disk = json.loads((tmp_path / "acts" / MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["model"]["spec"] == TINY_VIT and len(manifest["model"]["weights_fingerprint"]) == 64
    assert manifest["dataset"]["kind"] == "class_folder" and manifest["dataset"]["class_names"] == ["ant", "bee", "cat"]
    assert manifest["layers"]["blocks.0"]["layout"] == {"n_prefix": 1, "grid_hw": [2, 2], "has_cls": True}
    assert manifest["layers"]["blocks.0"]["width"] == 32
    assert manifest["dtype"] == "float16" and manifest["software"]["traitlens"]
    assert [len(shard) for shard in ActivationStore(tmp_path / "acts").shards(0)] == [16, 16, 4]


def test_a_different_job_cannot_reuse_the_output(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "acts"), show_progress=False)
    with pytest.raises(StoreError, match=r"a store of another job \(different .*layers"):
        extract(_config(class_folder, tmp_path / "acts", layers=("0",)), show_progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds no traitlens output"):
        extract(_config(class_folder, tmp_path / "other"), show_progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(StoreError, match="holds no traitlens output"):
        extract(_config(class_folder, tmp_path / "other", overwrite=True), show_progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_extraction(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "acts"), show_progress=False)
    manifest = extract(_config(class_folder, tmp_path / "acts", layers=("0",), overwrite=True), show_progress=False)
    assert list(manifest["layers"]) == ["blocks.0"]
    assert sorted(p.name for p in (tmp_path / "acts" / "layers").iterdir()) == ["blocks.0"]
    assert "overwrite" not in json.loads((tmp_path / "acts" / "job.json").read_text())


def test_a_store_not_written_by_extract_is_not_resumed(class_folder: Path, tmp_path: Path) -> None:
    store_from_arrays(tmp_path / "acts", {"x": np.ones((4, 3), np.float32)})
    with pytest.raises(StoreError, match="did not write"):
        extract(_config(class_folder, tmp_path / "acts"), show_progress=False)
    assert not (tmp_path / "acts" / "job.json").exists()


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("batch_size", -1), ("images_per_shard", 0),
                                               ("images_per_shard", -1), ("batch_size", 2.5), ("layers", ()),
                                               ("layers", ("0", "")), ("tokens", "some"), ("dtype", "int64")])
def test_a_bad_config_is_refused_before_any_work(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(StoreError, match=field.split("_")[0]):
        _config(tmp_path / "images", tmp_path / "acts", **{field: value})
    assert not (tmp_path / "acts").exists()


def test_a_source_with_no_readable_image_stores_nothing(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in ("a", "b", "c"):
        (root / "ant").mkdir(parents=True, exist_ok=True)
        (root / "ant" / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="none of the 3 images"):
        extract(_config(root, tmp_path / "acts"), show_progress=False)
    assert not (tmp_path / "acts" / MANIFEST).exists()
    with pytest.raises(DataError, match="none of the 3 images"):  # and again when resumed
        extract(_config(root, tmp_path / "acts"), show_progress=False)


def test_one_image_file_is_a_source(tmp_path: Path) -> None:
    image = write_image(tmp_path / "photo.png", 0)
    manifest = extract(_config(image, tmp_path / "acts"), show_progress=False)
    assert manifest["n_images"] == 1 and manifest["dataset"]["kind"] == "image_file"
    assert [(i.source, i.label) for i in ActivationStore(tmp_path / "acts").images] == [("photo.png", None)]


def test_cls_tokens_need_a_cls_token(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "cls", tokens="cls"), show_progress=False)
    assert ActivationStore(tmp_path / "cls").layer(0).n_tokens == 9
    with pytest.raises(LayerError, match="no CLS token"):
        extract(_config(class_folder, tmp_path / "cnn", model="torchvision:resnet18", layers=("layer1",), tokens="cls"))


def test_wrong_layer_lists_valid_layers(class_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(LayerError, match=r"blocks\.0, blocks\.1"):
        extract(_config(class_folder, tmp_path / "acts", layers=("7",)))


def test_segmentation_masks_become_patch_labels(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "seg"
    (root / "annotations").mkdir(parents=True)
    (root / "names.txt").write_text("background\nwing\n")
    for i in range(3):
        write_image(root / "images" / f"s{i}.png", i, size=(32, 32))
        mask = np.zeros((32, 32), np.uint8)
        mask[:16, 16:] = 1  # top-right quadrant = patch 1 of the 2x2 grid
        Image.fromarray(mask).save(root / "annotations" / f"s{i}.png")
    extract(_config(root, tmp_path / "acts"), show_progress=False)
    store = ActivationStore(tmp_path / "acts")
    labels = store.patch_labels("blocks.0")
    assert labels is not None
    assert labels.tolist() == [[0, 1, 0, 0]] * 3
    assert store.manifest["dataset"]["mask_names"] == ["background", "wing"]


def test_cnn_feature_maps_are_stored_as_tokens(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "acts", model="torchvision:mobilenet_v2", layers=("features.13",)),
            show_progress=False)
    store = ActivationStore(tmp_path / "acts")
    layer = store.layer("features.13")
    assert (layer.width, layer.layout.grid_hw, layer.layout.n_prefix) == (96, (14, 14), 0)
    assert layer.n_tokens == 9 * 196
    assert all(shard.flags.c_contiguous for shard in store.shards(0))  # a feature map is transposed to tokens


def test_negative_layer_indices_on_the_command_line_are_the_last_blocks(class_folder: Path, tmp_path: Path) -> None:
    deeper = TINY_VIT.replace("depth=2", "depth=3")
    code, out, err = run_cli(["extract", "--model", deeper, "--random-init", "--data", str(class_folder),
                              "--layers", "-2,-1", "--out", str(tmp_path / "acts")])
    assert code == 0, err
    assert ActivationStore(tmp_path / "acts").layer_names == ["blocks.1", "blocks.2"]
    assert "layer blocks.2: width 32" in out


def test_one_image_file_on_the_command_line(tmp_path: Path) -> None:
    image = write_image(tmp_path / "photo.jpg", 3)
    code, out, err = run_cli(["extract", "--model", TINY_VIT, "--random-init", "--data", str(image),
                              "--layers", "0", "--out", str(tmp_path / "acts")])
    assert code == 0, err
    assert "(image_file, 1 images, 0 skipped)" in out


def test_fortran_order_shards_of_earlier_versions_are_read(class_folder: Path, tmp_path: Path) -> None:
    extract(_config(class_folder, tmp_path / "acts", dtype="float32"), show_progress=False)
    store = ActivationStore(tmp_path / "acts")
    assert all(shard.flags.c_contiguous for shard in store.shards(0))
    c_order = [np.array(shard) for shard in store.shards(0)]
    batch = next(store.shuffled(0, ShuffleConfig(batch_size=8)).batches())
    files = store.layer(0).shard_files
    del store  # its memory maps would see the rewritten bytes
    for file, shard in zip(files, c_order, strict=True):
        np.save(tmp_path / "acts" / file, np.asfortranarray(shard))
    again = ActivationStore(tmp_path / "acts")
    for before, after in zip(c_order, again.shards(0), strict=True):
        assert after.flags.f_contiguous and not after.flags.c_contiguous
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(next(again.shuffled(0, ShuffleConfig(batch_size=8)).batches()), batch)
