"""A small real activation store shared by the SAE tests (made once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traitlens.store import ExtractConfig, extract

STORE_MODEL = "timm:vit_tiny_patch16_224?img_size=64&depth=2&embed_dim=32&num_heads=2&num_classes=3"
STORE_LAYER = "blocks.1"


@pytest.fixture(scope="session")
def sae_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images x 17 tokens (CLS + 4x4 patches) of a random-init ViT, width 32."""
    root = tmp_path_factory.mktemp("sae_store")
    rng = np.random.default_rng(0)
    for i in range(40):
        path = root / "images" / f"class{i % 3}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    extract(ExtractConfig(model=STORE_MODEL, data=root / "images", layers=("1",), out=root / "acts", pretrained=False,
                          tokens="all", dtype="float32", batch_size=8, images_per_shard=16), show_progress=False)
    return root / "acts"
