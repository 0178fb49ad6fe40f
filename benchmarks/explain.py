"""Heatmap speed, measured side by side in one run: Finer-CAM against Grad-CAM, and traitlens
against pytorch-grad-cam, on the same model, batch, layer and images.

Per model (random init: speed does not depend on the weights), one batch of skimage photos is
explained by traitlens' Grad-CAM and Finer-CAM (Grad-CAM base, 3 automatic references) and by
pytorch-grad-cam's GradCAM and FinerCAM (GradCAM base, its default 3 comparison classes), each
once to warm up, then ``--repeats`` times round-robin (so a busy machine slows all alike); the
table gives the median seconds per batch. Both sides return maps at the model input's size.

Usage: python benchmarks/explain.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from traitlens.backbones import Backbone, load_backbone
from traitlens.explain import cam_maps, default_layer

MODELS = (("timm:vit_small_patch16_224", 8), ("torchvision:mobilenet_v2", 16))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "immunohistochemistry", "retina")


def photo_batch(backbone: Backbone, n: int) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    images = [Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()) for i in range(n)]
    return torch.stack([backbone.preprocess.image(image) for image in images])


def peer_runners(backbone: Backbone, layer: str, pixels_bchw: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """pytorch-grad-cam on the same module; a ViT needs its reshape function."""
    from pytorch_grad_cam import FinerCAM, GradCAM

    module = backbone.layer(layer).module
    layout = backbone.layer(layer).layout
    reshape = None
    if layout.n_prefix:
        def reshape(tokens_btd: torch.Tensor) -> torch.Tensor:
            patches_bnd = tokens_btd[:, layout.n_prefix:]
            return patches_bnd.reshape(len(patches_bnd), *layout.grid_hw, -1).permute(0, 3, 1, 2)

    grad_cam = GradCAM(model=backbone.model, target_layers=[module], reshape_transform=reshape)
    finer_cam = FinerCAM(model=backbone.model, target_layers=[module], reshape_transform=reshape, base_method=GradCAM)
    return {"pytorch-grad-cam GradCAM": lambda: grad_cam(input_tensor=pixels_bchw, targets=None),
            "pytorch-grad-cam FinerCAM": lambda: finer_cam(pixels_bchw, targets=None)}


def measure(spec: str, batch: int, repeats: int) -> tuple[str, dict[str, float]]:
    backbone = load_backbone(spec, pretrained=False)
    layer = default_layer(backbone)
    pixels_bchw = photo_batch(backbone, batch)
    runners: dict[str, Callable[[], Any]] = {
        "traitlens Grad-CAM": lambda: cam_maps(backbone, pixels_bchw, "grad-cam", layer=layer),
        "traitlens Finer-CAM": lambda: cam_maps(backbone, pixels_bchw, "grad-cam", refs_bk="auto", layer=layer),
        **peer_runners(backbone, layer, pixels_bchw),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats + 1):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return layer, {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32, "
          f"median of {args.repeats} round-robin repeats\n")
    print("| model | batch | layer | implementation | s / batch | images/s |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for spec, batch in MODELS:
        layer, seconds = measure(spec, batch, args.repeats)
        for name, value in seconds.items():
            print(f"| {spec} | {batch} | {layer} | {name} | {value:.3f} | {batch / value:.1f} |")
        ratios.append((spec, seconds))
    print()
    for spec, seconds in ratios:
        print(f"{spec}: Finer-CAM / Grad-CAM (traitlens) {seconds['traitlens Finer-CAM'] / seconds['traitlens Grad-CAM']:.2f} "
              f"(goal <= 1.2); traitlens / pytorch-grad-cam time: Grad-CAM "
              f"{seconds['traitlens Grad-CAM'] / seconds['pytorch-grad-cam GradCAM']:.2f}, Finer-CAM "
              f"{seconds['traitlens Finer-CAM'] / seconds['pytorch-grad-cam FinerCAM']:.2f}")


if __name__ == "__main__":
    main()
