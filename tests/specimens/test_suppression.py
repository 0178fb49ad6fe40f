"""Suppressing trait latents: which latents are chosen, the matched control, and flip counts that
agree with steering the same latents by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.fuzz.harness import assert_refused
from traitlens.backbones import Backbone, load_backbone
from traitlens.cli import main
from traitlens.data import ImageSource, open_image_source
from traitlens.interventions import LatentEdit, latent_edit, steer_source
from traitlens.sae.io import load_sae_with_config
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.baselines import SAEFeatures
from traitlens.specimens.benchmark import ScoringError, read_benchmark
from traitlens.specimens.discovery import trait_feature_ap
from traitlens.specimens.flips import lookalike_flip_rate
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.specimens.suppression import (
    SuppressionOptions,
    matched_random_latents,
    suppression_flips,
    top_trait_latents,
)
from traitlens.store import ActivationStore, ExtractConfig, extract


def test_top_trait_latents_rank_by_ap_with_ties_to_the_lower_index() -> None:
    ap_tw = torch.tensor([[0.1, 0.5, 0.5, 0.9], [float("nan")] * 4], dtype=torch.float64)
    assert top_trait_latents(ap_tw, ["ring", "stripe"], 3) == {"ring": [3, 1, 2], "stripe": []}


def test_matched_random_latents_come_from_the_nearest_frequencies() -> None:
    frequency_w = torch.tensor([0.50, 0.01, 0.02, 0.03, 0.49, 0.48, 0.30, 0.04])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        drawn = matched_random_latents(frequency_w, [0, 1], candidates=2, generator=generator)
        assert drawn[0] in (4, 5) and drawn[1] in (2, 3) and len(set(drawn)) == 2
    again = [matched_random_latents(frequency_w, [0, 1], 2, torch.Generator().manual_seed(seed)) for seed in (3, 3)]
    assert again[0] == again[1]


def _steered_flips(backbone: Backbone, sae: SparseAutoencoder, latents: list[int], source: ImageSource, images: list[int],
                   species_n: torch.Tensor, pair_map: dict[int, int]) -> dict:
    edit = latent_edit(sae, [LatentEdit(w, "zero") for w in latents], backbone.layer("blocks.1").layout, "all")
    steered = steer_source(backbone, "blocks.1", edit, source, images, batch_size=8)
    return lookalike_flip_rate(steered.before_n, steered.after_n, species_n, pair_map)


def test_every_column_agrees_with_steering_by_hand(specimens_with_sae: tuple[Path, Path]) -> None:
    data, sae_dir = specimens_with_sae
    sae, _ = load_sae_with_config(sae_dir)
    with torch.no_grad():
        sae.W_dec.mul_(40.0)  # latents this loud move predictions when zeroed, so the counts below are not all zero
    backbone = load_backbone("traitlens:specimens-vit")
    benchmark, source = read_benchmark(data), open_image_source(data)
    latents = {pair.trait: [3, 17, 40] for pair in benchmark.lookalikes}
    frequency_w = torch.linspace(0.0, 1.0, sae.config.width)
    options = SuppressionOptions(n_latents=3, n_random=2, candidates=6, seed=7, batch_size=8)
    rows = suppression_flips(backbone, sae, "blocks.1", "all", source, benchmark, latents, frequency_w, options)
    assert any(row["change_rate"] for row in rows[:-1])
    species_of = benchmark.species_of([record.source for record in source.records])
    index = benchmark.class_index(backbone.class_names, backbone.spec)
    generator = torch.Generator().manual_seed(7)
    totals = {"trait": [0, 0]}
    for pair, row in zip(benchmark.lookalikes, rows[:-1], strict=True):
        images = [i for i, name in enumerate(species_of) if name in (pair.a, pair.b)]
        species_n = torch.tensor([index[species_of[i]] for i in images])
        pair_map = {index[pair.a]: index[pair.b], index[pair.b]: index[pair.a]}
        trait = _steered_flips(backbone, sae, [3, 17, 40], source, images, species_n, pair_map)
        top = _steered_flips(backbone, sae, [3], source, images, species_n, pair_map)
        draws = [_steered_flips(backbone, sae, matched_random_latents(frequency_w, [3, 17, 40], 6, generator), source, images,
                                species_n, pair_map) for _ in range(2)]
        assert row["pair"] == f"{pair.a} / {pair.b}" and row["n_eligible"] == trait["n_eligible"]
        assert (row["flip_rate"], row["flip_rate_top_latent"], row["change_rate"]) == (
            trait["flip_rate"], top["flip_rate"], trait["change_rate"])
        random_eligible = sum(draw["n_eligible"] for draw in draws)
        assert row["flip_rate_random"] == pytest.approx(sum(draw["n_flipped"] for draw in draws) / random_eligible)
        totals["trait"][0] += trait["n_flipped"]
        totals["trait"][1] += trait["n_eligible"]
    assert rows[-1]["pair"] == "all" and rows[-1]["n_eligible"] == totals["trait"][1]
    assert rows[-1]["flip_rate"] == pytest.approx(totals["trait"][0] / totals["trait"][1])


def test_the_score_command_picks_trait_latents_on_the_store_and_writes_the_table(
        capsys: pytest.CaptureFixture[str], specimens_with_sae: tuple[Path, Path], tmp_path: Path) -> None:
    data, sae_dir = specimens_with_sae
    acts = tmp_path / "acts"
    extract(ExtractConfig(model="traitlens:specimens-vit", data=data, layers=("blocks.1",), out=acts, tokens="all"),
            show_progress=False)
    code = main(["specimens", "score", "suppression", "--model", "traitlens:specimens-vit", "--sae", str(sae_dir),
                 "--acts", str(acts), "--data", str(data), "--out", str(tmp_path / "scores"), "--n-latents", "2", "--n-random", "1"])
    printed = capsys.readouterr().out
    assert code == 0 and "| pair | trait |" in printed
    result = json.loads((tmp_path / "scores" / "suppression.json").read_text())
    sae, _ = load_sae_with_config(sae_dir)
    benchmark = read_benchmark(data)
    ap_tw, _ = trait_feature_ap(SAEFeatures(sae), ActivationStore(acts), "blocks.1", benchmark)
    assert result["trait_latents"] == top_trait_latents(ap_tw, list(benchmark.trait_labels), 2)
    assert [row["pair"] for row in result["rows"]][-1] == "all"
    score = ["specimens", "score", "suppression", "--model", "traitlens:specimens-vit", "--sae", str(sae_dir), "--acts", str(acts)]
    assert_refused([*score, "--data", str(data), "--out", str(tmp_path / "bad"), "--n-latents", "0"], acts, says="at least 1")
    other = generate(GenerateConfig(tmp_path / "other", n=16, seed=6), show_progress=False)
    assert_refused([*score, "--data", str(other), "--out", str(tmp_path / "bad")], acts, other, says="not from the benchmark at")
    for bad in ({"n_latents": 0}, {"n_random": 1.5}, {"seed": -1}, {"batch_size": True}):
        with pytest.raises(ScoringError):
            SuppressionOptions(**bad)
