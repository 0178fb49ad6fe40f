from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.store.conftest import TINY_VIT, write_image
from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.errors import DataError, LayerError, StoreError
from traitlens.store import ActivationStore, ExtractConfig, extract
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
    with pytest.raises(StoreError, match="different job.*layers"):
        extract(_config(class_folder, tmp_path / "acts", layers=("0",)), show_progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        extract(_config(class_folder, tmp_path / "other"), show_progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


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
    layer = ActivationStore(tmp_path / "acts").layer("features.13")
    assert (layer.width, layer.layout.grid_hw, layer.layout.n_prefix) == (96, (14, 14), 0)
    assert layer.n_tokens == 9 * 196
