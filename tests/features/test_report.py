"""``write_report``: well-formed pages whose links and images all exist, the right latents, heat
layers that are the latent's normalised patch map, escaped text, and pages without images when
the store's images are gone."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.html_pages import local_targets, parse_page
from traitlens.features import LatentFeatures, write_report
from traitlens.features.report_html import index_page
from traitlens.overlay import MAX_OPACITY


@pytest.fixture(scope="module")
def report(features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(features_dir, tmp_path_factory.mktemp("report") / "report", images_per_latent=4)


def test_pages_are_well_formed_and_every_link_exists(report: Path, features_dir: Path) -> None:
    features = LatentFeatures(features_dir)
    index = parse_page(report)
    alive = [int(latent) for latent in features.alive]
    assert [int(str(row["data-search"]).split()[0]) for row in index.rows] == alive
    pages = sorted((report.parent / "latents").glob("*.html"))
    assert sorted(int(page.stem) for page in pages) == alive
    for target in local_targets(report, index):
        assert target.is_file(), target
    n_images = 0
    for page_path in pages:
        page = parse_page(page_path)
        assert "../index.html" in page.links
        for target in local_targets(page_path, page):
            assert target.is_file(), f"{page_path.name} links {target}"
        drawn = [src for src in page.images if not src.startswith("data:")]
        assert len(drawn) == min(4, len(features.top_images(int(page_path.stem))[0]))
        n_images += len(drawn)
    assert n_images > 0


def test_heat_layers_are_the_normalised_patch_maps(report: Path, features_dir: Path) -> None:
    features = LatentFeatures(features_dir)
    latent = int(features.alive[0])
    page = parse_page(report.parent / "latents" / f"{latent}.html")
    heats = [src for src in page.images if src.startswith("data:image/png;base64,")]
    images = features.top_images(latent)[0][:4]
    assert len(heats) == len(images)
    for heat, image in zip(heats, images, strict=True):
        alpha_hw = np.asarray(Image.open(io.BytesIO(base64.b64decode(heat.split(",", 1)[1]))))[..., 3]
        expected = np.round(255 * MAX_OPACITY * features.patch_map(latent, int(image)) / features.max_activation[latent])
        np.testing.assert_array_equal(alpha_hw, expected)


def test_max_latents_keeps_the_most_frequent(features_dir: Path, tmp_path: Path) -> None:
    features = LatentFeatures(features_dir)
    index = parse_page(write_report(features_dir, tmp_path / "report", max_latents=3, images_per_latent=1))
    shown = [int(str(row["data-search"]).split()[0]) for row in index.rows]
    most_frequent = np.lexsort((np.arange(features.width), -features.frequency))[:3]
    assert shown == sorted(int(latent) for latent in most_frequent)
    assert len(list((tmp_path / "report" / "latents").glob("*.html"))) == 3
    write_report(features_dir, tmp_path / "report", max_latents=2, images_per_latent=1)  # a smaller report drops the extra page
    assert len(list((tmp_path / "report" / "latents").glob("*.html"))) == 2


def test_text_is_escaped() -> None:
    row = {"latent": 0, "frequency": 0.5, "mean": 1.0, "max": 2.0, "top_class": "<script>alert(1)</script>",
           "class_ap": float("nan"), "top_label": 'a "quoted" & label', "label_ap": None}
    html = index_page([row], "<b>layer</b>", ["SAE <i>"])
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;layer&lt;/b&gt;" in html and "a &quot;quoted&quot; &amp; label" in html
    assert "n/a" in html


def test_a_report_without_the_images_says_so(features_dir: Path, specimens_store: Path, tmp_path: Path) -> None:
    """The store's image folder is gone: pages still list everything, with a note and no images."""
    acts = tmp_path / "acts"
    shutil.copytree(specimens_store, acts)
    manifest = json.loads((acts / "manifest.json").read_text())
    manifest["dataset"]["path"] = str(tmp_path / "moved away")
    (acts / "manifest.json").write_text(json.dumps(manifest))
    features = tmp_path / "features"
    shutil.copytree(features_dir, features, ignore=shutil.ignore_patterns("report"))
    features_manifest = json.loads((features / "features.json").read_text())
    features_manifest["acts"] = str(acts)
    (features / "features.json").write_text(json.dumps(features_manifest))
    index = write_report(features)
    assert not (index.parent / "images").exists()
    latent = int(LatentFeatures(features).alive[0])
    page_path = index.parent / "latents" / f"{latent}.html"
    page = parse_page(page_path)
    assert page.images == [] and "are gone, so they are not shown" in page_path.read_text()
    assert "image " in page_path.read_text()  # the captions remain
