"""Models and images the explain tests share: the real ImageNet MobileNetV2 on skimage's photos,
and a small random-init timm ViT."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from tests.pretrained import mobilenet_checkpoint
from traitlens.backbones import Backbone, Preprocess, load_backbone
from traitlens.backbones.probe import probe_layers

SMALL_VIT = "timm:vit_tiny_patch16_224?img_size=64&depth=4&num_classes=10"
EGYPTIAN_CAT, TABBY_CAT, ESPRESSO = 285, 281, 967


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


@pytest.fixture(scope="session")
def mobilenet() -> Backbone:
    return load_backbone("torchvision:mobilenet_v2", weights=mobilenet_checkpoint())


@pytest.fixture(scope="session")
def small_mobilenet(mobilenet: Backbone) -> Backbone:
    """The same network reading 96 px images: a 3x3 grid at the last stages, for Score-CAM's one
    forward per channel (a CNN takes any input size; the layouts are probed for this one)."""
    size = (96, 96)
    preprocess = Preprocess(size_hw=size, resize=96, mean=mobilenet.preprocess.mean, std=mobilenet.preprocess.std)
    stages = [(f"features.{i}", module) for i, module in enumerate(mobilenet.model.features)]
    return Backbone("torchvision:mobilenet_v2@96px", mobilenet.model, probe_layers(stages, mobilenet.model, size),
                    preprocess, mobilenet.model, mobilenet.class_names)


@pytest.fixture(scope="session")
def chelsea_pixels(mobilenet: Backbone) -> torch.Tensor:
    """(1, 3, 224, 224): skimage's cat, which MobileNetV2 calls an Egyptian cat."""
    return mobilenet.preprocess.image(photo("chelsea"))[None]


@pytest.fixture(scope="session")
def vit() -> Backbone:
    return load_backbone(SMALL_VIT, pretrained=False)


@pytest.fixture(scope="session")
def vit_pixels(vit: Backbone) -> torch.Tensor:
    """(3, 3, 64, 64): three photos the random ViT assigns to three different classes, none of
    whose maps the ReLU blanks at ``blocks.2`` (it blanks some photos, e.g. the cat's)."""
    return torch.stack([vit.preprocess.image(photo(name)) for name in ("astronaut", "camera", "horse")])


def pearson_b(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """(b,) float64 Pearson correlation of each pair of maps (b, h, w)."""
    a = torch.as_tensor(maps_a).flatten(1).double()
    b = torch.as_tensor(maps_b).flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
