"""``traitlens segment`` against the model's own forward pass, side by side in one run.

On generated specimens (one labelled specimen of sp00, every image of sp00 segmented), with the
embedded ``traitlens:specimens-vit`` (the issue's goal: at least 20 images/s on 2 CPU cores): the
whole job (decoding, features, propagation, pixels, files written) against a bare forward pass of
the same images to the same layer, then each stage of the features backend alone on the same
batch, so the table shows where the time goes. Each choice of the backend (the guided filter,
a memory of earlier images) and the README's example model (the pretrained MobileNetV2, at 224 px)
then run the same job, with their mean IoU against the benchmark beside their speed.

Usage: python benchmarks/segmentation.py [--n-images 3200]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import torch

from traitlens.data import open_image_source
from traitlens.segment import SegmentConfig, segment
from traitlens.segment.backends.features import FeatureBackend
from traitlens.segment.propagation import DescribedMemory, propagate
from traitlens.segment.support import read_support
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.specimens.segmentation_score import SegmentationScoreConfig, score_predictions


def _seconds(work: object) -> float:
    started = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - started


def _job_seconds(config: SegmentConfig) -> float:
    """The whole job, its model loaded first (loading is not what is timed)."""
    backend = FeatureBackend(config, 10)
    return _seconds(lambda: segment(config, backend=backend, show_progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=3200, help="specimens generated (one in 16 is sp00)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        bench = generate(GenerateConfig(root / "bench", n=args.n_images, seed=7), show_progress=False)
        species = bench / "images" / "sp00"
        first = sorted(species.iterdir())[0]
        config = SegmentConfig(data=species, out=root / "out", support_images=(first,),
                               support_masks=(bench / "annotations" / "sp00" / first.name,))
        backend = FeatureBackend(config, 10)
        source = open_image_source(species)
        images = [source.load_image(index) for index in range(len(source))]
        batch = images[:config.batch_size]
        support = read_support(list(config.support_images), list(config.support_masks), None, 1, None)
        backend.start(support.images)
        backend.segment(batch)  # warm-up

        job = _seconds(lambda: segment(config, backend=backend, show_progress=False))
        # each choice's cost and what it buys, on the same images: the same job with it changed, and
        # the README's example model (a pretrained backbone at 224 px) for scale
        variants = {"defaults (embedded ViT)": (config, job)}
        for name, change in (("--refine bilinear (no guided filter)", {"refine": "bilinear"}),
                             ("--memory 4 (the last 4 images join the support)", {"memory": 4, "batch_size": 4}),
                             ("--model torchvision:mobilenet_v2 (224 px input)", {"model": "torchvision:mobilenet_v2"})):
            changed = dataclasses.replace(config, out=root / f"out-{len(variants)}", **change)  # type: ignore[arg-type]
            variants[name] = (changed, _job_seconds(changed))
        scores = {name: score_predictions(SegmentationScoreConfig(data=bench, out=root / "score", pred=changed.out))
                  for name, (changed, _) in variants.items()}
        pixels_bchw = torch.stack([backend.preprocess.image(image) for image in images])
        forward = _seconds(lambda: [backend.backbone.tokens(pixels_bchw[start:start + config.batch_size], backend.layer)
                                    for start in range(0, len(images), config.batch_size)])
        decode = _seconds(lambda: [source.load_image(index) for index in range(len(batch))])
        encode = _seconds(lambda: backend._encode(batch))
        queries_bpd, colours_bpq3 = backend._encode(batch)
        assert backend.memory is not None
        memory = DescribedMemory.of(backend.memory, backend.fine)
        probs = [propagate(q, c, backend.cell_hw, memory, 10, config.n_neighbours, config.temperature, backend.fine)
                 for q, c in zip(queries_bpd, colours_bpq3, strict=True)]
        fine = _seconds(lambda: [propagate(q, c, backend.cell_hw, memory, 10, config.n_neighbours, config.temperature,
                                           backend.fine) for q, c in zip(queries_bpd, colours_bpq3, strict=True)])
        to_pixels = _seconds(lambda: [backend._pixels(p, image) for p, image in zip(probs, batch, strict=True)])

    n = len(images)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{n} images of sp00 (96 px), traitlens:specimens-vit at {backend.layer}, batch {config.batch_size}\n")
    print("| measurement | s | images/s |\n|---|---:|---:|")
    print(f"| **traitlens segment, the whole job** | {job:.2f} | **{n / job:.1f}** |")
    print(f"| bare forward to {backend.layer} (preprocessed already) | {forward:.2f} | {n / forward:.1f} |")
    print(f"\nratio whole job / bare forward: **{job / forward:.1f}** (goal: at least 20 images/s: "
          f"{'met' if n / job >= 20 else 'missed'})\n")
    print("Each choice against the defaults, the whole job on the same images, and its mean IoU over the traits "
          "(against the benchmark's label maps, the support image left out):\n")
    print("| segment | images/s | mean IoU, all traits |\n|---|---:|---:|")
    for name, (_, seconds) in variants.items():
        print(f"| {name} | {n / seconds:.1f} | {scores[name]['mean_iou_traits']:.3f} |")
    print(f"\nPer stage, one batch of {len(batch)} images, ms per image:\n\n| stage | ms / image |\n|---|---:|")
    for name, seconds in (("decode the image file", decode), ("preprocess and forward to the layer, colours per patch", encode),
                          ("propagation (coarse patches, then pixels by colour)", fine),
                          ("back to image pixels, guided filter, labels", to_pixels)):
        print(f"| {name} | {1000 * seconds / len(batch):.2f} |")


if __name__ == "__main__":
    main()
