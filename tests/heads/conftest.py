"""A labelled activation store the head tests share: three colour classes through a tiny random-init ViT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traitlens.backbones import Backbone, load_backbone
from traitlens.store import ExtractConfig, extract

HEAD_MODEL = "timm:vit_tiny_patch16_224?img_size=32&depth=2&embed_dim=32&num_heads=2&num_classes=3"
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
PER_CLASS = 12


def write_colour_folder(root: Path, per_class: int = PER_CLASS) -> Path:
    """``root/<colour>/<i>.png``: a colour under heavy pixel noise, so classes overlap pixel by
    pixel but are separable on average."""
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for i in range(per_class):
            noisy = np.asarray(rgb) + rng.normal(0, 60, (32, 32, 3))
            path = root / name / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="session")
def colour_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours") / "images")


@pytest.fixture(scope="session")
def colour_store(colour_images: Path) -> Path:
    """36 images x 5 tokens (CLS + 2x2 patches) at blocks.0 and blocks.1, width 32, float16."""
    out = colour_images.parent / "acts"
    extract(ExtractConfig(model=HEAD_MODEL, data=colour_images, layers=("0", "1"), out=out, pretrained=False,
                          tokens="all", dtype="float16", batch_size=16, images_per_shard=10), show_progress=False)
    return out


@pytest.fixture(scope="session")
def patch_store(colour_images: Path) -> Path:
    out = colour_images.parent / "patch_acts"
    extract(ExtractConfig(model=HEAD_MODEL, data=colour_images, layers=("1",), out=out, pretrained=False,
                          tokens="patch", dtype="float32", batch_size=16), show_progress=False)
    return out


@pytest.fixture(scope="session")
def head_model() -> Backbone:
    return load_backbone(HEAD_MODEL, pretrained=False)
