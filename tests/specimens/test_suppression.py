"""Suppressing trait latents: which latents are chosen, the matched control, and flip counts that
agree with steering the same latents by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.interventions import LatentEdit, latent_edit, steer_source
from traitlens.sae.io import load_sae
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.flips import lookalike_flip_rate
from traitlens.specimens.suppression import (
    SuppressionOptions,
    matched_random_latents,
    suppression_flips,
    top_trait_latents,
)


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


def test_flip_counts_agree_with_steering_by_hand(specimens_with_sae: tuple[Path, Path]) -> None:
    data, sae_dir = specimens_with_sae
    sae, _ = load_sae(sae_dir)
    backbone = load_backbone("traitlens:specimens-vit")
    benchmark, source = read_benchmark(data), open_image_source(data)
    latents = {pair.trait: [3, 17, 40] for pair in benchmark.lookalikes}
    frequency_w = torch.linspace(0.0, 1.0, sae.config.width)
    rows = suppression_flips(backbone, sae, "blocks.1", "all", source, benchmark, latents, frequency_w,
                             SuppressionOptions(n_latents=3, n_random=2, batch_size=8))
    species_of = [benchmark.image_species[benchmark.resolve(record.source)] for record in source.records]
    names = backbone.class_names
    assert names is not None
    index = {name: i for i, name in enumerate(names)}
    edit = latent_edit(sae, [LatentEdit(w, "zero") for w in (3, 17, 40)], backbone.layer("blocks.1").layout, "all")
    total_eligible = total_flipped = 0
    for row in rows[:-1]:
        a, b = row["pair"].split(" / ")
        images = [i for i, name in enumerate(species_of) if name in (a, b)]
        steered = steer_source(backbone, "blocks.1", edit, source, images, batch_size=8)
        expected = lookalike_flip_rate(steered.before_n, steered.after_n, torch.tensor([index[species_of[i]] for i in images]),
                                       {index[a]: index[b], index[b]: index[a]})
        assert row["n_eligible"] == expected["n_eligible"] and row["flip_rate"] == expected["flip_rate"]
        total_eligible += expected["n_eligible"]
        total_flipped += expected["n_flipped"]
    assert rows[-1]["pair"] == "all" and rows[-1]["n_eligible"] == total_eligible
    assert rows[-1]["flip_rate"] == pytest.approx(total_flipped / total_eligible)
