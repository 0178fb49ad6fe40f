"""Trait discovery on a benchmark whose answers are planted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.specimens.hand_made_benchmark import GRID, N_IMAGES, D, make_store
from traitlens.backbones.layout import TokenLayout
from traitlens.errors import DataError, LayerError
from traitlens.features.patch_positives import describe_positives
from traitlens.sae import SAEConfig, SparseAutoencoder, save_sae
from traitlens.specimens.baselines import FeatureSet, KMeansFeatures, NeuronFeatures, PCAFeatures
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.discovery import DiscoveryConfig, DiscoveryOptions, score_discovery, trait_discovery
from traitlens.store.arrays import store_from_arrays
from traitlens.store.reader import ActivationStore


@pytest.mark.parametrize("tokens", ["all", "patch"])
def test_trait_discovery_finds_the_planted_neuron(benchmark: tuple[Path, np.ndarray], tmp_path: Path, tokens: str) -> None:
    data, ring_patch = benchmark
    store = ActivationStore(make_store(tmp_path / "acts", ring_patch, tokens))
    sets: dict[str, FeatureSet] = {"neurons": NeuronFeatures(), "pca": PCAFeatures(n_components=3), "kmeans": KMeansFeatures(n_clusters=4)}
    result = trait_discovery(sets, store, "blocks.3", read_benchmark(data))
    assert result.traits == ("eye_ring", "stripe") and result.n_patches == 15 * 9
    assert (result.n_images_fit, result.n_images_scored) == (15, 15) and result.n_positive == (15, 15)
    assert result.n_features == {"neurons": 12, "pca": 6, "kmeans": 4}
    assert result.best_ap["neurons"][0] == 1.0 and result.best_feature["neurons"][0] == 0
    assert result.best_ap["pca"][0] == 1.0
    stripe_ap = result.best_ap["neurons"][1]
    assert stripe_ap is not None and stripe_ap < 0.5
    rows = result.rows()
    assert rows[0]["chance"] == pytest.approx(1 / 9) and rows[0]["neurons feature"] == 0
    # one feature column a block, features recomputed per block: the same answer
    blocked = trait_discovery(sets, store, "blocks.3", read_benchmark(data), DiscoveryOptions(max_score_elements=1))
    assert blocked.best_ap == result.best_ap and blocked.best_feature == result.best_feature


def test_masks_go_through_the_models_crop(benchmark: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data, ring_patch = benchmark
    store = ActivationStore(make_store(tmp_path / "acts", ring_patch, preprocess=False))
    result = trait_discovery({"neurons": NeuronFeatures()}, store, "blocks.3", read_benchmark(data))
    eye_ring_ap = result.best_ap["neurons"][0]
    assert eye_ring_ap is not None and eye_ring_ap < 1.0


def test_score_discovery_writes_tables_with_an_sae(benchmark: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data, ring_patch = benchmark
    acts = make_store(tmp_path / "acts", ring_patch)
    sae = SparseAutoencoder(SAEConfig(d_in=D, width=5, activation="relu"))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[3, 0] = 1.0
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, 0.0, -2.0, 0.0]))
        sae.b_dec.zero_()
    save_sae(sae, tmp_path / "sae", {"layer": "blocks.3"})
    options = DiscoveryOptions(pca_components=3, kmeans_clusters=4)
    result = score_discovery(DiscoveryConfig(acts=acts, data=data, out=tmp_path / "out", sae=tmp_path / "sae", options=options))
    assert result["layer"] == "blocks.3" and result["rows"][0]["sae"] == 1.0 and result["rows"][0]["sae feature"] == 3
    assert json.loads((tmp_path / "out" / "discovery.json").read_text()) == result
    table = (tmp_path / "out" / "discovery.md").read_text()
    assert "| trait | positives | chance | sae | neurons | pca | kmeans |" in table
    assert "| eye_ring | 15 | 0.111 | 1.000 | 1.000 |" in table
    assert "15 scored images (the odd-numbered store images)" in table and describe_positives(0.1) in table
    wrong_width = SparseAutoencoder(SAEConfig(d_in=D + 1, width=5, activation="relu"))
    save_sae(wrong_width, tmp_path / "wide")
    with pytest.raises(LayerError, match="7-dim tokens"):
        score_discovery(DiscoveryConfig(acts=acts, data=data, out=tmp_path / "out", sae=tmp_path / "wide", layer="blocks.3",
                                        options=options))


def test_discovery_refuses_cls_stores_and_folders_without_traits(benchmark: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data, _ = benchmark
    acts = store_from_arrays(tmp_path / "acts", {"blocks.3": np.zeros((N_IMAGES, D), np.float32)}, tokens_per_image=1)
    manifest = json.loads((acts / "manifest.json").read_text())
    manifest["tokens"] = "cls"
    manifest["layers"]["blocks.3"]["layout"] = TokenLayout(1, GRID, True).to_dict()
    (acts / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LayerError, match="only CLS tokens"):
        trait_discovery({"neurons": NeuronFeatures()}, ActivationStore(acts), "blocks.3", read_benchmark(data))
    with pytest.raises(DataError, match="traits.json missing"):
        score_discovery(DiscoveryConfig(acts=acts, data=tmp_path, out=tmp_path / "out"))
    (tmp_path / "traits.json").write_text('{"traits": []}')
    with pytest.raises(DataError, match="damaged benchmark description"):
        read_benchmark(tmp_path)


def test_store_images_must_belong_to_the_benchmark(benchmark: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data, _ = benchmark
    acts = store_from_arrays(tmp_path / "acts", {"x": np.zeros((4, D), np.float32)}, tokens_per_image=2)
    manifest = json.loads((acts / "manifest.json").read_text())
    manifest["tokens"] = "patch"
    (acts / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not an image of the benchmark"):
        trait_discovery({"neurons": NeuronFeatures()}, ActivationStore(acts), "x", read_benchmark(data))
