"""``analyze_features``: the sparse columns and every statistic against a dense recomputation,
resumption to the same bytes, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from tests.resume import file_bytes
from traitlens.backbones.preprocess import Preprocess
from traitlens.data import open_image_source
from traitlens.errors import StoreError, TraitlensError
from traitlens.features import (
    FeaturesConfig,
    FeaturesError,
    LatentFeatures,
    analyze_features,
    sae_weights_sha256,
    sparse_columns,
    write_report,
)
from traitlens.features import analysis as analysis_module
from traitlens.features.patch_positives import describe_positives, patch_coverage, patch_positives
from traitlens.sae.io import load_sae_with_config, save_sae
from traitlens.store import ActivationStore, ExtractConfig, extract

from .conftest import ANALYSIS, D_IN, N_IMAGES, STORE_LAYER, STORE_MODEL, TOKENS_PER_IMAGE, save_random_sae


@pytest.fixture(scope="module")
def dense(specimens_store: Path, relu_sae: Path) -> np.ndarray:
    """Every stored token's latents by one dense ``sae.encode``, (n_tokens, width)."""
    store = ActivationStore(specimens_store)
    tokens_nd = np.concatenate([shard[:] for shard in store.image_ordered_shards(STORE_LAYER)])
    sae, _ = load_sae_with_config(relu_sae)
    with torch.no_grad():
        return sae.encode(torch.from_numpy(tokens_nd)).numpy()


def test_columns_hold_exactly_the_dense_latents(features_dir: Path, dense: np.ndarray) -> None:
    features = LatentFeatures(features_dir)
    assert features.width == dense.shape[1] and features.manifest["n_tokens"] == len(dense) == N_IMAGES * TOKENS_PER_IMAGE
    assert 0 < len(features.alive) < features.width, "the test SAE should have both alive and dead latents"
    for latent in range(features.width):
        rows, values = features.latent(latent)
        assert np.array_equal(rows, np.flatnonzero(dense[:, latent]))
        assert np.array_equal(values, dense[rows, latent])
    assert features.manifest["summary"]["nnz"] == np.count_nonzero(dense)


def test_statistics_match_a_dense_computation(features_dir: Path, dense: np.ndarray, specimens_store: Path) -> None:
    features = LatentFeatures(features_dir)
    fires = dense != 0
    counts = fires.sum(0)
    np.testing.assert_array_equal(features.count, counts)
    np.testing.assert_allclose(features.frequency, counts / len(dense))
    np.testing.assert_allclose(features.mean_activation, dense.sum(0, dtype=np.float64) / np.maximum(counts, 1), rtol=1e-6)
    np.testing.assert_array_equal(features.max_activation, dense.max(0))

    k = ANALYSIS["top_k"]
    for latent in range(features.width):
        column = dense[:, latent]
        order = np.argsort(-column, kind="stable")[: min(k, counts[latent])]
        rows, values = features.top_tokens(latent)
        assert np.array_equal(rows, order) and np.array_equal(values, column[order])

    image_activation = dense.reshape(N_IMAGES, TOKENS_PER_IMAGE, -1).max(1)  # (images, width)
    for latent in range(features.width):
        np.testing.assert_array_equal(features.image_activations(latent), image_activation[:, latent])
        order = np.argsort(-image_activation[:, latent], kind="stable")[:k]
        order = order[image_activation[order, latent] > 0]
        images, values = features.top_images(latent)
        assert np.array_equal(images, order) and np.array_equal(values, image_activation[order, latent])

    store = ActivationStore(specimens_store)
    class_names = store.class_names
    assert class_names is not None and features.class_names == class_names
    labels = np.array([class_names.index(str(image.label)) for image in store.images])
    for c in range(len(class_names)):
        members = labels == c
        np.testing.assert_allclose(features.class_mean[:, c], image_activation[members].mean(0))
        expected = [average_precision_score(members, image_activation[:, latent]) for latent in range(features.width)]
        np.testing.assert_allclose(features.class_ap[:, c], expected)
    np.testing.assert_allclose(features.class_prevalence, np.bincount(labels, minlength=len(class_names)) / N_IMAGES)


def test_label_ap_ranks_the_patches_each_label_covers(features_dir: Path, dense: np.ndarray, specimens_store: Path) -> None:
    """Label AP is over the patches of every image with a mask, positive as patch_positives says on
    the source's masks in the model's geometry: a part too small to win any patch's majority vote
    gets an AP too, and only a label no mask holds has none."""
    features = LatentFeatures(features_dir)
    store = ActivationStore(specimens_store)
    names = store.manifest["dataset"]["mask_names"]
    assert features.label_names == names[1:]
    source = open_image_source(store.manifest["dataset"]["path"])
    index_of = {record.source: index for index, record in enumerate(source.records)}
    geometry = Preprocess.from_dict(store.manifest["preprocess"]).mask
    masks = [source.load_mask(index_of[image.source]) for image in store.images]
    assert all(mask is not None for mask in masks)
    positives_pl = np.concatenate([
        patch_positives(patch_coverage(geometry(mask), features.layout.grid_hw, len(names)), range(1, len(names)), 0.1)
        for mask in masks if mask is not None])
    patches = dense.reshape(N_IMAGES, TOKENS_PER_IMAGE, -1)[:, 1:].reshape(-1, features.width)  # without the CLS token
    for column in range(len(features.label_names)):
        if not positives_pl[:, column].any():
            assert np.isnan(features.label_ap[:, column]).all()
            continue
        expected = [average_precision_score(positives_pl[:, column], patches[:, latent]) for latent in range(features.width)]
        np.testing.assert_allclose(features.label_ap[:, column], expected)
        assert features.label_prevalence[column] == pytest.approx(positives_pl[:, column].mean())
    majority = store.patch_labels(STORE_LAYER)
    assert majority is not None
    never_a_majority = [column for column in range(len(features.label_names)) if not (majority == column + 1).any()]
    small_parts = [column for column in never_a_majority if positives_pl[:, column].any()]
    assert small_parts, "the fixture should hold a part that wins no patch's majority"
    assert not np.isnan(features.label_ap[:, small_parts]).any()
    assert features.manifest["label_positives"] == {
        "rule": describe_positives(0.1), "min_coverage": 0.1, "n_images": N_IMAGES, "n_patches": len(positives_pl)}


def test_maps_and_summary_rows(features_dir: Path, dense: np.ndarray) -> None:
    features = LatentFeatures(features_dir)
    latent = int(features.alive[0])
    image = int(features.top_images(latent)[0][0])
    grid = features.layout.grid_hw
    expected = dense[image * TOKENS_PER_IMAGE + 1 : (image + 1) * TOKENS_PER_IMAGE, latent].reshape(grid)
    np.testing.assert_array_equal(features.patch_map(latent, image), expected)
    rows = features.summary_rows()
    assert [row["latent"] for row in rows] == list(range(features.width))
    for row in rows:
        lift = features.class_ap[row["latent"]] - features.class_prevalence
        assert row["top_class"] == features.class_names[int(np.nanargmax(lift))]
        assert row["class_ap"] == features.class_ap[row["latent"], int(np.nanargmax(lift))]
        assert row["frequency"] == features.frequency[row["latent"]]
    with pytest.raises(FeaturesError, match="out of range"):
        features.latent(features.width)


def _config(sae: Path, acts: Path, out: Path, **overrides: object) -> FeaturesConfig:
    return FeaturesConfig(sae=sae, acts=acts, out=out, **{**ANALYSIS, **overrides})  # type: ignore[arg-type]


class _Killed(Exception):
    pass


def _kill_after_the_first_chunk(config: FeaturesConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the analysis until it has written its first chunk, then kill it."""
    real_write_chunk = sparse_columns.write_chunk
    written: list[Path] = []

    def write_then_die(path: Path, *args: object) -> None:
        if written:
            raise _Killed
        real_write_chunk(path, *args)  # type: ignore[arg-type]
        written.append(path)

    with monkeypatch.context() as patched:
        patched.setattr(analysis_module, "write_chunk", write_then_die)
        with pytest.raises(_Killed):
            analyze_features(config)
    assert written[0].is_file() and not (config.out / "features.json").exists()


def test_a_killed_run_resumes_to_the_same_bytes(features_dir: Path, specimens_store: Path, relu_sae: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _kill_after_the_first_chunk(_config(relu_sae, specimens_store, out), monkeypatch)
    encoded: list[int] = []
    real_encode_chunk = analysis_module._encode_chunk

    def encode_and_note(*args: Any) -> Any:
        encoded.append(args[3])  # the chunk's first row
        return real_encode_chunk(*args)

    monkeypatch.setattr(analysis_module, "_encode_chunk", encode_and_note)
    analyze_features(_config(relu_sae, specimens_store, out))
    assert 0 not in encoded and len(encoded) > 1  # the first chunk was kept, the others were encoded
    assert file_bytes(out) == file_bytes(features_dir)

    # a kill after the pass: the manifest and a statistics file gone, then the columns too
    for lost in ("features.json", "latent_statistics.safetensors"):
        (out / lost).unlink()
    analyze_features(_config(relu_sae, specimens_store, out))
    assert file_bytes(out) == file_bytes(features_dir)
    for lost in ("features.json", "columns.json", "latent_rows.npy"):
        (out / lost).unlink()
    analyze_features(_config(relu_sae, specimens_store, out))
    assert file_bytes(out) == file_bytes(features_dir)


def test_a_store_with_shuffled_rows_gives_the_same_features(features_dir: Path, specimens_store: Path,
                                                            relu_sae: Path, tmp_path: Path) -> None:
    """The fixture store holds its rows image after image (the default); the same images with
    shuffled rows give the same features, read in image order."""
    assert not ActivationStore(specimens_store).row_order.shuffled
    extract(ExtractConfig(model=STORE_MODEL, data=specimens_store.parent / "specimens", layers=("1",), out=tmp_path / "acts",
                          pretrained=False, tokens="all", dtype="float32", batch_size=8, images_per_shard=10,
                          row_order="shuffled"), show_progress=False)
    assert ActivationStore(tmp_path / "acts").row_order.shuffled
    out = analyze_features(_config(relu_sae, tmp_path / "acts", tmp_path / "out"))
    # the JSON files name the store (its manifest's hash); every array must be the same bytes
    arrays = {path: data for path, data in file_bytes(out).items() if not path.endswith(".json")}
    assert len(arrays) >= 4 and arrays == {path: data for path, data in file_bytes(features_dir).items() if path in arrays}


def test_a_finished_directory_is_returned_as_it_is(features_dir: Path, specimens_store: Path, relu_sae: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(features_dir, out)
    before = file_bytes(out)

    def fail(*args: object) -> None:
        raise AssertionError("a finished directory was recomputed")

    monkeypatch.setattr(analysis_module, "_write_columns", fail)
    monkeypatch.setattr(analysis_module, "_statistics", fail)
    assert analyze_features(_config(relu_sae, specimens_store, out)) == out
    assert file_bytes(out) == before
    with pytest.raises(FeaturesError, match="another job.*top_k"):
        analyze_features(_config(relu_sae, specimens_store, out, top_k=3))


def test_resuming_after_the_store_changed_or_on_another_device_is_refused(specimens_store: Path, relu_sae: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    acts, out = tmp_path / "acts", tmp_path / "out"
    shutil.copytree(specimens_store, acts)
    _kill_after_the_first_chunk(_config(relu_sae, acts, out), monkeypatch)
    job = json.loads((out / "job.json").read_text())
    assert job["device"] == "cpu" and len(job["acts_manifest_sha256"]) == 64

    # the store extracted again at the same path, from other images: same shapes, another manifest
    manifest = json.loads((acts / "manifest.json").read_text())
    manifest["dataset"]["fingerprint"] = "another dataset"
    (acts / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeaturesError, match=r"holds features of another job \(different acts_manifest_sha256\)") as refused:
        analyze_features(_config(relu_sae, acts, out))
    assert "\n" not in str(refused.value)
    assert sorted(path.name for path in (out / "chunks").iterdir()) == ["00000.npz"]  # nothing encoded into it

    shutil.rmtree(acts)
    shutil.copytree(specimens_store, acts)
    (out / "job.json").write_text(json.dumps({**job, "device": "cuda"}))  # as if started on a GPU
    with pytest.raises(FeaturesError, match=r"another job \(different device\)"):
        analyze_features(_config(relu_sae, acts, out))
    (out / "job.json").write_text(json.dumps(job))
    assert LatentFeatures(analyze_features(_config(relu_sae, acts, out))).manifest["job"] == job


def _sae_with_dead_latents(directory: Path, dead: slice) -> Path:
    """The ReLU test SAE with the latents of ``dead`` made unable to fire (a very negative bias)."""
    save_random_sae(directory, activation="relu")
    sae, saved = load_sae_with_config(directory)
    with torch.no_grad():
        sae.b_enc[dead] = -1e4
    save_sae(sae, directory, {"layer": saved["layer"]})
    return directory


def test_blocks_of_latents_that_never_fire(specimens_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statistics are computed a block of latents at a time; a block without a single nonzero
    gives padding, and the files are those of one block over all latents."""
    sae_dir = _sae_with_dead_latents(tmp_path / "sae", slice(8, 20))
    whole = LatentFeatures(analyze_features(_config(sae_dir, specimens_store, tmp_path / "whole")))
    assert (whole.count[8:20] == 0).all() and whole.count[:8].any()
    monkeypatch.setattr(analysis_module, "_BLOCK_ELEMENTS", 4 * N_IMAGES)  # blocks of 4 latents: 8-11, 12-15, 16-19 dead
    blocks = analyze_features(_config(sae_dir, specimens_store, tmp_path / "blocks"))
    assert file_bytes(blocks) == file_bytes(whole.root)
    top_rows, top_values = LatentFeatures(blocks).top_tokens(12)
    assert len(top_rows) == len(top_values) == 0


def test_an_sae_that_never_fires(specimens_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sae_dir = _sae_with_dead_latents(tmp_path / "sae", slice(None))
    features = LatentFeatures(analyze_features(_config(sae_dir, specimens_store, tmp_path / "out")))
    assert features.manifest["summary"] == {"nnz": 0, "alive": 0, "dead": features.width, "mean_l0": 0.0,
                                            "n_nonfinite_tokens": 0}
    assert (features.count == 0).all() and (features.max_activation == 0).all()
    statistics = features._statistics
    assert (statistics["top_tokens_wk"] == -1).all() and (statistics["top_images_wk"] == -1).all()
    assert (statistics["top_token_values_wk"] == 0).all() and (statistics["top_image_values_wk"] == 0).all()
    np.testing.assert_allclose(features.class_ap, np.broadcast_to(features.class_prevalence, features.class_ap.shape))
    assert len(features.latent(0)[0]) == 0 and not features.patch_map(0, 0).any()
    index = write_report(features.root)
    assert "0 of 48 latents fire" in index.read_text() and not list((index.parent / "latents").iterdir())


def test_sae_weights_sha256_is_the_hash_the_features_record(features_dir: Path, relu_sae: Path, tmp_path: Path) -> None:
    features = LatentFeatures(features_dir)
    assert features.sae_sha256 == sae_weights_sha256(relu_sae) == hashlib.sha256((relu_sae / "sae.safetensors").read_bytes()).hexdigest()
    assert features.sae_sha256 != sae_weights_sha256(save_random_sae(tmp_path / "other", activation="relu", seed=1))
    with pytest.raises(TraitlensError, match="cannot read SAE weights"):
        sae_weights_sha256(tmp_path / "missing")


def test_errors_are_one_line(specimens_store: Path, relu_sae: Path, tmp_path: Path) -> None:
    wide = save_random_sae(tmp_path / "wide", d_in=D_IN + 1)
    with pytest.raises(FeaturesError, match=r"reads 33-dim tokens but layer blocks\.1 .* is 32-dim"):
        analyze_features(_config(wide, specimens_store, tmp_path / "a"))
    no_layer = save_random_sae(tmp_path / "no_layer", layer=None)
    with pytest.raises(FeaturesError, match="pass --layer"):
        analyze_features(_config(no_layer, specimens_store, tmp_path / "b"))
    with pytest.raises(StoreError, match="layer 'blocks.7' is not in the store"):
        analyze_features(_config(relu_sae, specimens_store, tmp_path / "c", layer="blocks.7"))
    with pytest.raises(StoreError, match="no activation store"):
        analyze_features(_config(relu_sae, tmp_path / "missing", tmp_path / "d"))
    with pytest.raises(TraitlensError, match="no saved SAE"):
        analyze_features(_config(tmp_path / "missing", specimens_store, tmp_path / "e"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FeaturesError, match="is not empty and holds no traitlens output"):
        analyze_features(_config(relu_sae, specimens_store, tmp_path / "busy"))
    with pytest.raises(FeaturesError, match="no features directory"):
        LatentFeatures(tmp_path / "missing")
    with pytest.raises(FeaturesError, match="features.json missing"):
        LatentFeatures(tmp_path / "busy")
    (tmp_path / "busy" / "features.json").write_text('{"format": "something else"}')
    with pytest.raises(FeaturesError, match="is not a traitlens features manifest"):
        LatentFeatures(tmp_path / "busy")


def test_topk_sae_on_cls_tokens_only(specimens_store: Path, tmp_path: Path) -> None:
    """A TopK SAE on a store's CLS tokens: k latents per token, no patch maps or label APs."""
    from traitlens.store.arrays import store_from_arrays

    store = ActivationStore(specimens_store)
    cls_nd = np.concatenate([shard[:] for shard in store.image_ordered_shards(STORE_LAYER)])[::TOKENS_PER_IMAGE]
    store_from_arrays(tmp_path / "cls", {STORE_LAYER: cls_nd}, tokens_per_image=1)
    manifest = json.loads((tmp_path / "cls" / "manifest.json").read_text())
    manifest["tokens"] = "cls"
    manifest["layers"][STORE_LAYER]["layout"] = store.layer(STORE_LAYER).layout.to_dict()
    (tmp_path / "cls" / "manifest.json").write_text(json.dumps(manifest))
    sae_dir = save_random_sae(tmp_path / "topk", activation="topk", k=3)
    features = LatentFeatures(analyze_features(_config(sae_dir, tmp_path / "cls", tmp_path / "out")))
    assert features.count.sum() == 3 * N_IMAGES and (features.count <= N_IMAGES).all()
    assert features.label_ap.shape == (features.width, 0) and features.class_ap.shape == (features.width, 0)
    assert {row["top_class"] for row in features.summary_rows()} == {None}
    with pytest.raises(FeaturesError, match="no patch maps"):
        features.patch_map(int(features.alive[0]), 0)
    page = write_report(features.root).parent / "latents" / f"{int(features.alive[0])}.html"
    assert "The store records no image source, so they are not shown." in page.read_text()


def test_nan_tokens_fire_nowhere_and_are_counted(tmp_path: Path) -> None:
    from traitlens.store.arrays import store_from_arrays

    tokens_nd = np.random.default_rng(0).normal(size=(40, D_IN)).astype(np.float32)
    tokens_nd[[3, 17], 5] = np.nan
    tokens_nd[30, 0] = np.inf
    store_from_arrays(tmp_path / "acts", {STORE_LAYER: tokens_nd}, tokens_per_image=4)
    sae_dir = save_random_sae(tmp_path / "sae", activation="relu")
    features = LatentFeatures(analyze_features(_config(sae_dir, tmp_path / "acts", tmp_path / "out")))
    assert features.manifest["summary"]["n_nonfinite_tokens"] == 3
    fired_rows = np.concatenate([features.latent(latent)[0] for latent in range(features.width)])
    assert not np.isin(fired_rows, [3, 17, 30]).any() and np.isin(np.arange(40), fired_rows).sum() == 37
