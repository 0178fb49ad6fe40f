"""One definition of patch AP: a latent's AP for a label in the feature report is the number trait
discovery gives the same latent and trait on the same images; and label APs need the masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from traitlens.data import open_image_source
from traitlens.features import FeaturesConfig, LatentFeatures, analyze_features, write_report
from traitlens.sae.io import load_sae_with_config
from traitlens.specimens.baselines import SAEFeatures
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.discovery import trait_feature_ap
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.store import ActivationStore, ExtractConfig, extract

from .conftest import ANALYSIS, STORE_LAYER, STORE_MODEL


@pytest.fixture(scope="module")
def odd_masks_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark of 20 specimens whose even-numbered images have no mask, extracted: trait
    discovery scores the odd-numbered images, and those are the only ones the features can label."""
    root = tmp_path_factory.mktemp("odd_masks")
    data = generate(GenerateConfig(root / "specimens", n=20, seed=3, size=64), show_progress=False)
    for record in open_image_source(data).records[::2]:
        (data / "annotations" / Path(record.source).relative_to("images")).with_suffix(".png").unlink()
    extract(ExtractConfig(model=STORE_MODEL, data=data, layers=("1",), out=root / "acts", pretrained=False, tokens="all",
                          dtype="float32", batch_size=8), show_progress=False)
    return root


def test_label_ap_is_discoverys_ap_on_the_same_images(odd_masks_only: Path, relu_sae: Path) -> None:
    acts, data = odd_masks_only / "acts", odd_masks_only / "specimens"
    features = LatentFeatures(analyze_features(FeaturesConfig(sae=relu_sae, acts=acts, out=odd_masks_only / "features",
                                                              **ANALYSIS)))  # type: ignore[arg-type]
    assert features.manifest["label_positives"]["n_images"] == 10
    benchmark = read_benchmark(data)
    ap_tf, _ = trait_feature_ap(SAEFeatures(load_sae_with_config(relu_sae)[0]), ActivationStore(acts), STORE_LAYER, benchmark)
    assert list(benchmark.trait_labels) == features.label_names[1:]  # every trait, after the body
    present = ~np.isnan(ap_tf.numpy()).all(1)
    assert present.sum() >= 4, "the benchmark should show several traits"
    # the same number through both paths, every latent and trait; a trait shown is never n/a
    np.testing.assert_allclose(features.label_ap[:, 1:].T[present], ap_tf.numpy()[present], rtol=1e-9)
    assert not np.isnan(features.label_ap[:, 1:][:, present]).any()


def test_without_the_masks_the_report_says_why_there_is_no_label_ap(odd_masks_only: Path, relu_sae: Path, tmp_path: Path) -> None:
    acts = tmp_path / "acts"
    shutil.copytree(odd_masks_only / "acts", acts)
    manifest = json.loads((acts / "manifest.json").read_text())
    manifest["dataset"]["path"] = str(tmp_path / "moved away")
    (acts / "manifest.json").write_text(json.dumps(manifest))
    features = LatentFeatures(analyze_features(FeaturesConfig(sae=relu_sae, acts=acts, out=tmp_path / "features",
                                                              **ANALYSIS)))  # type: ignore[arg-type]
    assert features.label_names == [] and features.label_ap.shape == (features.width, 0)
    assert features.manifest["label_note"] == f"no patch-label AP: the store's images at {tmp_path / 'moved away'} are gone"
    page = write_report(features.root).parent / "latents" / f"{int(features.alive[0])}.html"
    assert "No patch-label AP: the store&#x27;s images at" in page.read_text()
