"""Settings every test needs (no model hub, ever: downloads fail fast instead of retrying) and data shared across packages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def specimens_with_sae(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 generated specimens (seed 5) and a random TopK SAE on blocks.1 of the embedded ViT (all tokens)."""
    import torch

    from traitlens.sae.config import SAEConfig
    from traitlens.sae.io import save_sae
    from traitlens.sae.model import SparseAutoencoder
    from traitlens.specimens.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("specimens_with_sae")
    data = generate(GenerateConfig(root / "specimens", n=24, seed=5), show_progress=False)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=128, width=96, activation="topk", k=8))
    save_sae(sae, root / "sae", {"layer": "blocks.1", "tokens_kind": "all", "model": "traitlens:specimens-vit"})
    return data, root / "sae"


@pytest.fixture(scope="session")
def twin_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 generated specimens (seed 4) with their counterfactual twins."""
    from traitlens.specimens.generate import GenerateConfig, generate

    return generate(GenerateConfig(tmp_path_factory.mktemp("twins") / "bench", n=32, seed=4, twins=True), show_progress=False)


COLOURS = {"blue": (40, 40, 200), "cyan": (40, 200, 200), "green": (40, 200, 40), "red": (200, 40, 40), "yellow": (200, 200, 40)}


@pytest.fixture(scope="session")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<colour>/<i>.png``: 10 noisy 32 px images of each of five colours."""
    root = tmp_path_factory.mktemp("finetune") / "colours"
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = (np.asarray(rgb) + rng.normal(0, 50, (32, 32, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root
