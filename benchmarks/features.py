"""``traitlens features`` against the machine's own limit: the bare encoding pass it cannot avoid.

A store of synthetic ViT-like tokens (1,500 images x 197 tokens, d=384, fp16, 10 image classes)
and a TopK SAE (width 6144, k=32). The floor reads the store in order and encodes every token with
the SAE, keeping nothing. ``analyze_features`` does the same pass and also keeps every nonzero,
assembles the column-major files, and computes every latent's statistics, top images and tokens,
class means and class APs. Both run in this process, one after the other, fp32 on the CPU.

Usage: python benchmarks/features.py [--images 1500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from traitlens.features import FeaturesConfig, LatentFeatures, analyze_features
from traitlens.sae.config import SAEConfig
from traitlens.sae.io import save_sae
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ActivationStore
from traitlens.store.arrays import store_from_arrays

D, WIDTH, K, TOKENS_PER_IMAGE, N_CLASSES, BATCH = 384, 6144, 32, 197, 10, 4096


def make_store(root: Path, n_images: int) -> Path:
    """Tokens of 24 hidden directions each, shifted per image class, labelled with their class."""
    rng = np.random.default_rng(0)
    dictionary = rng.standard_normal((4096, D)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    class_shift = rng.standard_normal((N_CLASSES, D)).astype(np.float32)
    n = n_images * TOKENS_PER_IMAGE
    tokens = np.empty((n, D), dtype=np.float16)
    for start in range(0, n, 8192):
        rows = min(8192, n - start)
        atoms = rng.integers(0, 4096, (rows, 24))
        chunk = np.einsum("nk,nkd->nd", rng.exponential(1.0, (rows, 24)).astype(np.float32), dictionary[atoms])
        chunk += class_shift[(np.arange(start, start + rows) // TOKENS_PER_IMAGE) % N_CLASSES]
        tokens[start : start + rows] = chunk
    store_from_arrays(root, {"blocks.9": tokens}, tokens_per_image=TOKENS_PER_IMAGE)
    # give the images classes, as a labelled image folder would
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for index, image in enumerate(manifest["images"]):
        image["label"] = f"class{index % N_CLASSES}"
    manifest["dataset"]["class_names"] = [f"class{c}" for c in range(N_CLASSES)]
    manifest_path.write_text(json.dumps(manifest))
    return root


@torch.no_grad()
def encode_pass(store: ActivationStore, sae: SparseAutoencoder) -> int:
    """The floor: every token read in order, converted to fp32 and encoded; returns the nonzeros."""
    nonzeros = 0
    for shard in store.shards("blocks.9"):
        for start in range(0, len(shard), BATCH):
            latents_nw = sae.encode(torch.from_numpy(np.asarray(shard[start : start + BATCH], dtype=np.float32)))
            nonzeros += int((latents_nw != 0).sum())
    return nonzeros


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        store = ActivationStore(make_store(root / "acts", args.images))
        torch.manual_seed(0)
        sae = SparseAutoencoder(SAEConfig(d_in=D, width=WIDTH, activation="topk", k=K))
        save_sae(sae, root / "sae", {"layer": "blocks.9", "tokens_kind": "all"})
        encode_pass(store, sae)  # warm the page cache and the kernels
        start = time.perf_counter()
        nonzeros = encode_pass(store, sae)
        floor_s = time.perf_counter() - start
        start = time.perf_counter()
        analyze_features(FeaturesConfig(sae=root / "sae", acts=root / "acts", out=root / "features", batch_size=BATCH,
                                        show_progress=False))
        analysis_s = time.perf_counter() - start
        features = LatentFeatures(root / "features")
        assert int(features.count.sum()) == nonzeros
        n_tokens = args.images * TOKENS_PER_IMAGE
        disk = sum(path.stat().st_size for path in (root / "features").iterdir() if path.is_file())
        print(f"tokens: {n_tokens:,} ({args.images} images x {TOKENS_PER_IMAGE}), d={D}, width={WIDTH}, k={K}; "
              f"nonzeros {nonzeros:,}; {len(features.alive)} latents alive")
        print(f"encode pass (floor):        {floor_s:7.2f} s  {n_tokens / floor_s / 1e3:8.1f} k tokens/s")
        print(f"traitlens features:         {analysis_s:7.2f} s  {n_tokens / analysis_s / 1e3:8.1f} k tokens/s")
        print(f"features / floor time:      {analysis_s / floor_s:7.2f}")
        print(f"features directory on disk: {disk / 2**20:7.1f} MiB ({disk / nonzeros:.1f} bytes per nonzero)")


if __name__ == "__main__":
    main()
