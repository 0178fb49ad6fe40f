"""Twin-difference latents: the latents whose activation changes between an image and its twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from traitlens.backbones import load_backbone
from traitlens.sae.config import SAEConfig
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.benchmark import ScoringError, read_benchmark
from traitlens.specimens.twin_latents import top_twin_latents, twin_difference


def test_twin_difference_ranks_changing_latents_and_never_a_dead_one(twin_bench: Path) -> None:
    backbone = load_backbone("traitlens:specimens-vit")
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=128, width=32, activation="relu"))
    with torch.no_grad():  # latent 0 never fires: it cannot tell an image from its twin
        sae.W_enc[0] = 0.0
        sae.b_enc[0] = -1.0
    difference = twin_difference(backbone, sae, "blocks.1", "all", read_benchmark(twin_bench), batch_size=8)
    assert set(difference) == {pair.trait for pair in read_benchmark(twin_bench).lookalikes}
    for difference_w in difference.values():
        assert difference_w.shape == (32,) and bool((difference_w >= 0).all()) and float(difference_w[0]) == 0.0
    chosen = top_twin_latents(difference, 5)
    for trait, latents in chosen.items():
        assert 0 not in latents and len(latents) == 5
        values = [float(difference[trait][w]) for w in latents]
        assert values == sorted(values, reverse=True) and min(values) >= float(difference[trait].sort().values[-6])
    assert top_twin_latents({"x": torch.zeros(4, dtype=torch.float64)}, 3) == {"x": []}


def test_twin_difference_needs_twins(specimens_with_sae: tuple[Path, Path]) -> None:
    data, _ = specimens_with_sae
    sae = SparseAutoencoder(SAEConfig(d_in=128, width=8, activation="relu"))
    with pytest.raises(ScoringError, match="no twins"):
        twin_difference(load_backbone("traitlens:specimens-vit"), sae, "blocks.1", "all", read_benchmark(data))
