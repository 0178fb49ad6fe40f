"""A small specimens benchmark (classes and part masks) seen through a tiny random-init ViT, a
random SAE on its layer, and the features of that SAE (made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from traitlens.features import FeaturesConfig, analyze_features
from traitlens.sae import save_sae
from traitlens.sae.config import SAEConfig
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.store import ExtractConfig, extract

STORE_MODEL = "timm:vit_tiny_patch16_224?img_size=64&patch_size=8&depth=2&embed_dim=32&num_heads=2&num_classes=3"
STORE_LAYER = "blocks.1"
N_IMAGES, TOKENS_PER_IMAGE, D_IN = 24, 65, 32
# Small chunks and batches that line up neither with images nor with the store's 10-image shards.
ANALYSIS = {"batch_size": 64, "chunk_tokens": 300, "top_k": 5, "show_progress": False}


def save_random_sae(directory: Path, d_in: int = D_IN, width: int = 48, activation: str = "topk", k: int = 4,
                    seed: int = 0, layer: str | None = STORE_LAYER) -> Path:
    """A random SAE with random biases, saved with the layer it reads (None: no layer recorded)."""
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, activation=activation, k=k))  # type: ignore[arg-type]
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.1)
    save_sae(sae, directory, {} if layer is None else {"layer": layer})
    return directory


@pytest.fixture(scope="session")
def specimens_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 specimens (64 px, 16 species, part masks) x 65 tokens (CLS + 8x8 patches), width 32, in 3 shards."""
    root = tmp_path_factory.mktemp("features_store")
    generate(GenerateConfig(root / "specimens", n=N_IMAGES, seed=5, size=64), show_progress=False)
    extract(ExtractConfig(model=STORE_MODEL, data=root / "specimens", layers=("1",), out=root / "acts", pretrained=False,
                          tokens="all", dtype="float32", batch_size=8, images_per_shard=10), show_progress=False)
    return root / "acts"


@pytest.fixture(scope="session")
def relu_sae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ReLU SAE: a varying number of latents per token, some latents dead."""
    return save_random_sae(tmp_path_factory.mktemp("sae") / "relu", activation="relu")


@pytest.fixture(scope="session")
def features_dir(specimens_store: Path, relu_sae: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return analyze_features(FeaturesConfig(sae=relu_sae, acts=specimens_store, out=tmp_path_factory.mktemp("features") / "out",
                                           **ANALYSIS))  # type: ignore[arg-type]
