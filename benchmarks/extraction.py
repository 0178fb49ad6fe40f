"""Extraction and store-reading speed, measured side by side in one run.

1. extraction throughput / bare forward throughput: same model (ViT-S/16, random init: speed does
   not depend on the weights), same images, same batch size. Extraction is timed end to end
   (decode, preprocess, forward, fp16 cast, atomic writes, stats), model loading excluded.
2. shuffled-reader tokens/s / plain sequential read of the same shards, for both modes of the
   shuffled reader: exact-uniform (rows gathered one by one) and runs (a few contiguous runs per
   batch, as training reads a store extracted with --row-order shuffled; the shards hold random
   data, so their row order does not change the speed). All give float32 torch batches; the shards
   sit in the page cache, so this measures the reader, not the disk.
3. bytes per token on disk.

With --device cuda the model runs on the GPU (extraction and bare forward alike; the store and
its reader stay on the host).

Usage: python benchmarks/extraction.py [--images 96] [--batch-size 16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.store import ActivationStore, ExtractConfig, ShuffleConfig, ShuffledBatches, extract

MODEL = "timm:vit_small_patch16_224"
# scikit-image's bundled natural photos (the ones that need no download)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "grass", "gravel",
          "brick", "hubble_deep_field", "retina", "immunohistochemistry", "colorwheel", "clock", "cell")


def write_images(folder: Path, n: int) -> Path:
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
    for i in range(n):
        pixels = photos[i % len(photos)]
        offset = 7 * (i // len(photos))  # distinct crops so no two files are the same image
        path = folder / PHOTOS[i % len(photos)] / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[offset:, offset:]).convert("RGB").save(path, quality=90)
    return folder


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_forward_images_per_s(images: Path, batch_size: int, device: str) -> float:
    backbone = load_backbone(MODEL, pretrained=False)
    backbone.to(device)
    source = open_image_source(images)
    pixels = torch.stack([backbone.preprocess.image(source.load_image(i)) for i in range(len(source))])
    with torch.inference_mode():
        backbone.forward(pixels[:batch_size].to(device))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for batch in pixels.split(batch_size):
            backbone.forward(batch.to(device))
        synchronize(device)
    return len(pixels) / (time.perf_counter() - start)


def extraction_images_per_s(images: Path, out: Path, layers: tuple[str, ...], batch_size: int, device: str) -> float:
    """Images per second of the whole job; the model is loaded (and fingerprinted) before the clock."""
    config = ExtractConfig(model=MODEL, data=images, layers=layers, out=out, pretrained=False, batch_size=batch_size,
                           device=device)
    backbone = load_backbone(MODEL, pretrained=False)
    backbone.weights_fingerprint()
    start = time.perf_counter()
    extract(config, show_progress=False, backbone=backbone)
    return len(open_image_source(images)) / (time.perf_counter() - start)


def bytes_per_token(root: Path) -> float:
    store = ActivationStore(root)
    files = [store.root / file for name in store.layer_names for file in store.layer(name).shard_files]
    tokens = sum(store.layer(name).n_tokens for name in store.layer_names)
    return sum(file.stat().st_size for file in files) / tokens


def reader_tokens_per_s(folder: Path, batch_size: int = 4096, width: int = 384, shard_rows: int = 131072,
                        n_shards: int = 8) -> dict[str, float]:
    """Best of three tokens/s of each reader: ``sequential``, ``uniform``, ``runs`` and ``one_run``."""
    rng = np.random.default_rng(0)
    for i in range(n_shards):
        np.save(folder / f"{i}.npy", rng.standard_normal((shard_rows, width), dtype=np.float32).astype(np.float16))
    shards = [np.load(folder / f"{i}.npy", mmap_mode="r") for i in range(n_shards)]
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    n_batches = shard_rows * n_shards // batch_size

    def sequential() -> Iterator[torch.Tensor]:
        for shard in shards:
            for start in range(0, len(shard), batch_size):
                rows_nd = np.asarray(shard[start : start + batch_size])
                yield torch.empty(rows_nd.shape, dtype=torch.float32).copy_(torch.from_numpy(rows_nd))

    def uniform() -> Iterator[torch.Tensor]:
        return ShuffledBatches(shards, ShuffleConfig(batch_size=batch_size, mode="uniform")).batches()

    def runs() -> Iterator[torch.Tensor]:
        return ShuffledBatches(shards, ShuffleConfig(batch_size=batch_size, mode="runs")).batches()

    def one_run() -> Iterator[torch.Tensor]:  # what the per-run cost leaves: the same reader, one run per batch
        return ShuffledBatches(shards, ShuffleConfig(batch_size=batch_size, mode="runs", runs_per_batch=1)).batches()

    def consume(batches: Iterator[torch.Tensor]) -> float:
        start = time.perf_counter()
        checksum = 0.0
        for batch in itertools.islice(batches, n_batches):
            checksum += float(batch[-1, -1])  # the same light touch for every reader
        return n_batches * batch_size / (time.perf_counter() - start)

    best = {"sequential": 0.0, "uniform": 0.0, "runs": 0.0, "one_run": 0.0}
    consume(sequential())  # bring the shards into the page cache
    for _ in range(3):
        for name, batches in (("sequential", sequential), ("uniform", uniform), ("runs", runs), ("one_run", one_run)):
            best[name] = max(best[name], consume(batches()))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        images = write_images(root / "images", args.images)
        bare = bare_forward_images_per_s(images, args.batch_size, args.device)
        last = extraction_images_per_s(images, root / "last", ("-1",), args.batch_size, args.device)
        every = extraction_images_per_s(images, root / "all", tuple(str(i) for i in range(12)), args.batch_size, args.device)
        bare = max(bare, bare_forward_images_per_s(images, args.batch_size, args.device))  # the better of two, before and after
        per_token_last, per_token_all = bytes_per_token(root / "last"), bytes_per_token(root / "all")
        (root / "shards").mkdir()
        reader = reader_tokens_per_s(root / "shards")

    card = f", GPU {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads{card}, torch {torch.__version__}")
    print(f"model {MODEL} (random init), {args.images} images, batch {args.batch_size}, fp32 compute, fp16 store\n")
    print("| measurement | value | goal |")
    print("|---|---|---|")
    print(f"| bare forward | {bare:.2f} img/s | |")
    print(f"| extraction, last block (patch tokens) | {last:.2f} img/s | |")
    print(f"| extraction / bare forward, last block | {last / bare:.3f} | >= 0.9 |")
    print(f"| extraction, all 12 blocks | {every:.2f} img/s | |")
    print(f"| extraction / bare forward, all 12 blocks | {every / bare:.3f} | >= 0.95 |")
    sequential = reader["sequential"]
    print(f"| sequential read (d=384, fp16 -> fp32 batches of 4096) | {sequential / 1e6:.2f} M tokens/s | |")
    print(f"| shuffled read, exact-uniform (row gather), same shards | {reader['uniform'] / 1e6:.2f} M tokens/s | |")
    print(f"| shuffled exact-uniform / sequential | {reader['uniform'] / sequential:.3f} | (kept for exactness) |")
    print(f"| shuffled read, runs on a pre-shuffled store (8 per batch), same shards | {reader['runs'] / 1e6:.2f} M tokens/s | |")
    print(f"| shuffled runs / sequential | {reader['runs'] / sequential:.3f} | >= 0.8 |")
    print(f"| same reader, 1 run per batch (no mixing; the per-run cost removed) / sequential | "
          f"{reader['one_run'] / sequential:.3f} | |")
    print(f"| bytes per token on disk, last-block store (d=384, fp16) | {per_token_last:.2f} | 768 + .npy header |")
    print(f"| bytes per token on disk, all-blocks store | {per_token_all:.2f} | 768 + .npy header |")


if __name__ == "__main__":
    main()
