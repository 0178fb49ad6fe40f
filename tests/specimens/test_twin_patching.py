"""Patching a pair's latents in from the twin, on an SAE whose answer is known: one that
reconstructs every token exactly, so patching all its live latents puts the twin's tokens in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from traitlens.backbones import load_backbone
from traitlens.sae.config import SAEConfig
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.benchmark import ScoringError, read_benchmark
from traitlens.specimens.flips import lookalike_flip_rate
from traitlens.specimens.reliance import benchmark_pixels
from traitlens.specimens.suppression import SuppressionOptions
from traitlens.specimens.twin_patching import twin_patch_flips

D, N_DEAD = 128, 2 * 128  # a matched control draws one dead latent per live one


def _exact_sae() -> SparseAutoencoder:
    """ReLU latents x and -x (decoded back to x exactly), then latents that never fire."""
    sae = SparseAutoencoder(SAEConfig(d_in=D, width=2 * D + N_DEAD, activation="relu"))
    identity = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([identity, -identity, torch.zeros(N_DEAD, D)]))
        sae.b_enc.copy_(torch.cat([torch.zeros(2 * D), -torch.ones(N_DEAD)]))
        sae.W_dec.copy_(torch.cat([identity, -identity, torch.zeros(N_DEAD, D)]))
    return sae


def test_patching_every_live_latent_from_the_twin_flips_as_the_twin_does(twin_bench: Path) -> None:
    backbone, sae, benchmark = load_backbone("traitlens:specimens-vit"), _exact_sae(), read_benchmark(twin_bench)
    live = list(range(2 * D))
    frequency_w = torch.cat([torch.ones(2 * D), torch.zeros(N_DEAD)])
    rows = twin_patch_flips(backbone, sae, "blocks.2", "all", benchmark, {pair.trait: live for pair in benchmark.lookalikes},
                            frequency_w, SuppressionOptions(n_random=1, batch_size=8))
    assert [row["pair"] for row in rows] == [f"{pair.a} / {pair.b}" for pair in benchmark.lookalikes] + ["all"]
    index = {name: i for i, name in enumerate(backbone.class_names)}
    with torch.no_grad():
        for pair, row in zip(benchmark.lookalikes, rows, strict=False):
            sources = sorted(s for s, species in benchmark.image_species.items() if species in (pair.a, pair.b))
            before = backbone.forward(benchmark_pixels(twin_bench, sources, backbone)).argmax(1)
            twin = backbone.forward(benchmark_pixels(twin_bench, [benchmark.twins[s] for s in sources], backbone)).argmax(1)
            species = [index[benchmark.image_species[s]] for s in sources]
            reliance = lookalike_flip_rate(before, twin, species, {index[pair.a]: index[pair.b], index[pair.b]: index[pair.a]})
            assert row["n_eligible"] == reliance["n_eligible"] and row["flip_rate"] == reliance["flip_rate"]
            # the control draws among the dead latents, which are 0 on image and twin alike
            assert row["flip_rate_random"] == (0.0 if reliance["n_eligible"] else None)
    assert rows[-1]["n_eligible"] == sum(row["n_eligible"] for row in rows[:-1])


def test_patching_needs_twins(specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    with pytest.raises(ScoringError, match="no twins"):
        twin_patch_flips(load_backbone("traitlens:specimens-vit"), _exact_sae(), "blocks.1", "all", read_benchmark(data),
                         {"crest": [0]}, torch.ones(2 * D + N_DEAD), SuppressionOptions())
