"""Where the time of an all-blocks extraction goes: the job of benchmarks/extraction.py (ViT-S/16,
96 photos, batch 16, fp16 store), once with the last block and once with all 12, with the wall time
of each piece summed over the job beside the bare forward over the same images.

Pieces: the model's forward with the captures (``Backbone.tokens``), the statistics
(``StatsAccumulator.add``), the shard write when the shard is complete (``_write``: what is left
to write and fsync then), and, where the code streams shard files, the block appends made on the
writer thread while the next forward runs (overlapped, so not part of the job's critical path).
Run it on an older checkout with PYTHONPATH=<checkout>/src to get the profile before a change.

Usage: python benchmarks/extraction_profile.py [--images 96] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from extraction import MODEL, bare_forward_images_per_s, write_images

import traitlens.atomic as atomic
import traitlens.store.extraction as extraction
import traitlens.store.stats as stats
from traitlens.backbones import Backbone, load_backbone
from traitlens.data import open_image_source
from traitlens.store import ExtractConfig, extract

SECONDS: dict[str, float] = {}


def timed(owner: Any, name: str, piece: str) -> None:
    """Wrap ``owner.name`` so its wall time adds up under ``piece``."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[piece] = SECONDS.get(piece, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def decode_seconds(images: Path) -> float:
    backbone = load_backbone(MODEL, pretrained=False)
    source = open_image_source(images)
    start = time.perf_counter()
    for i in range(len(source)):
        backbone.preprocess.image(source.load_image(i))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    timed(Backbone, "tokens", "forward with captures (Backbone.tokens)")
    timed(stats.StatsAccumulator, "add", "statistics (StatsAccumulator.add)")
    timed(extraction._Extraction, "_write", "shard write when complete (_write, fsync included)")
    if hasattr(atomic, "NpyStream"):
        timed(atomic.NpyStream, "append", "streamed appends on the writer thread (overlapped)")
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        images = write_images(root / "images", args.images)
        bare = args.images / max(bare_forward_images_per_s(images, args.batch_size, "cpu") for _ in range(2))
        print(f"model {MODEL} (random init), {args.images} images, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads, traitlens at {Path(extraction.__file__).parents[2]}\n")
        print("| piece | last block (s) | all 12 blocks (s) |\n|---|---|---|")
        columns = []
        for name, layers in (("last", ("-1",)), ("all", tuple(str(i) for i in range(12)))):
            backbone = load_backbone(MODEL, pretrained=False)
            backbone.weights_fingerprint()
            SECONDS.clear()
            start = time.perf_counter()
            extract(ExtractConfig(model=MODEL, data=images, layers=layers, out=root / name, pretrained=False,
                                  batch_size=args.batch_size), show_progress=False, backbone=backbone)
            columns.append({"whole job": time.perf_counter() - start, **SECONDS})
        for piece in dict.fromkeys([*columns[0], *columns[1]]):
            print(f"| {piece} | {columns[0].get(piece, 0.0):.3f} | {columns[1].get(piece, 0.0):.3f} |")
        print(f"| bare forward, same images (best of 2) | {bare:.3f} | {bare:.3f} |")
        decode = decode_seconds(images)
        print(f"| decoding and preprocessing the images, alone (a thread of the job; the bare forward has none) "
              f"| {decode:.3f} | {decode:.3f} |")
        print(f"| **bare forward / whole job** | **{bare / columns[0]['whole job']:.3f}** | "
              f"**{bare / columns[1]['whole job']:.3f}** |")


if __name__ == "__main__":
    main()
