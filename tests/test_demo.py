"""The demo end to end, small: every step runs, the report holds the four tables and its pictures,
parses, and links only to files that exist; a second run resumes and writes the same report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.html_pages import local_targets, parse_page
from traitlens.demo import DEMO_MODEL, DemoConfig, run_demo
from traitlens.errors import TraitlensError
from traitlens.output_folder import claim_output_folder
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.store import ExtractConfig, extract


def test_a_small_demo_writes_a_report_whose_links_and_images_exist(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path / "demo", n_images=48, sae_expansion=2, sae_epochs=2, trait_latents=3, n_random=1)
    printed = run_demo(config)
    assert "accuracy" in printed and "# Trait discovery" in printed and "Look-alike flips" in printed
    assert (config.data / "twins").is_dir() and DEMO_MODEL in printed and "clearest true story" in printed
    page = parse_page(config.report)
    assert page.n_tables == 5
    targets = local_targets(config.report, page)
    assert any(target.name == "index.html" for target in targets)
    assert any(target.parent.name == "latents" for target in targets)
    for target in targets:
        assert target.is_file(), target
    # pictures: per trait the best latent's top images beside the mask, per pair the CAMs and the
    # images before and after suppression, each a small file beside the page; two inline charts
    figures = [target for target in targets if target.parent.name == "report-figures"]
    assert {name.split("-")[0] for name in (target.name for target in figures)} == {"discovery", "localization", "suppression"}
    # per pair the trait, the twin (the demo draws twins), Grad-CAM and Finer-CAM
    assert len([target for target in figures if target.name.startswith("localization")]) == 4 * 8
    assert config.report.read_text().count("<svg") == 2
    for latent_page in {target for target in targets if target.parent.name == "latents"}:
        for target in local_targets(latent_page, parse_page(latent_page)):
            assert target.is_file(), f"{latent_page} references {target}"
    results = json.loads((config.scores / "demo.json").read_text())
    text = " ".join(page.text)
    assert all(row["pair"] in text for row in results["suppression"])
    assert all(len(row["latents"]) == 3 for row in results["suppression"][:-1])
    # the twin patching table: one row per pair and the pooled one, each pair with its 3 twin latents
    assert [row["pair"] for row in results["patching"]] == [row["pair"] for row in results["suppression"]]
    assert all(len(results["twin_latents"][row["trait"]]) == 3 for row in results["patching"][:-1])
    assert "patched in from the twin" in printed
    report_bytes = config.report.read_bytes()
    assert run_demo(config) == printed and config.report.read_bytes() == report_bytes


def test_a_demo_folder_of_another_model_is_refused_before_anything_is_drawn(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    claim_output_folder(out, "demo", resumable=True)
    benchmark = generate(GenerateConfig(tmp_path / "bench", n=16, seed=1))
    extract(ExtractConfig(model="traitlens:specimens-vit", data=benchmark, layers=("blocks.1",), out=out / "acts", tokens="all"))
    with pytest.raises(TraitlensError, match="holds a demo of traitlens:specimens-vit; the demo now runs on .*--overwrite"):
        run_demo(DemoConfig(out=out, n_images=16))
    assert not (out / "specimens").exists()
