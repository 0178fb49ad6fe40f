"""A hand-made benchmark folder and activation store whose scores are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from traitlens.backbones.layout import TokenLayout
from traitlens.backbones.preprocess import Preprocess
from traitlens.store.arrays import store_from_arrays

N_IMAGES, D = 30, 6
GRID, PATCH, CROP = (3, 3), 8, 6  # 24x36 annotations, center-cropped to 24x24 by the model
SPECIES = ("finch", "sparrow")
TRAIT_VALUES = {"finch": {"eye_ring": "ring", "stripe": "stripe"}, "sparrow": {"eye_ring": "none", "stripe": "stripe"}}


def make_benchmark(root: Path) -> tuple[Path, np.ndarray]:
    """A benchmark folder whose eye ring (label 2, 4 px) sits on the left edge of a patch that
    rotates over the grid, and whose stripe (label 3) is placed at random; returns the folder and
    each image's eye-ring patch."""
    rng = np.random.default_rng(0)
    ring_patch = np.arange(N_IMAGES) % 9
    images = []
    for i in range(N_IMAGES):
        species = SPECIES[(i // 2) % 2]
        labels = np.zeros((24, 24 + 2 * CROP), np.uint8)
        labels[2:22, CROP + 2 : CROP + 22] = 1
        stripe_row, stripe_col = divmod(int(rng.choice([p for p in range(9) if p != ring_patch[i]])), 3)
        labels[stripe_row * PATCH : (stripe_row + 1) * PATCH, CROP + stripe_col * PATCH : CROP + stripe_col * PATCH + 4] = 3
        # the left edge of the patch: a grid over the uncropped map would put column-2 rings in column 1
        ring_row, ring_col = divmod(int(ring_patch[i]), 3)
        labels[ring_row * PATCH + 3 : ring_row * PATCH + 5, CROP + ring_col * PATCH : CROP + ring_col * PATCH + 2] = 2
        path = root / "annotations" / species / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(path)
        images.append({"source": f"images/{species}/{i:03d}.png", "species": species, "traits": TRAIT_VALUES[species],
                       "occluded_fraction": 0.0})
    traits = [{"name": "eye_ring", "kind": "presence", "values": ["none", "ring"], "part": "head", "label": 2},
              {"name": "stripe", "kind": "presence", "values": ["none", "stripe"], "part": "wing", "label": 3}]
    description = {"format": "traitlens.specimens", "version": 1, "seed": 0, "size": 24, "n": N_IMAGES, "traits": traits,
                   "species": [{"name": name, "plan": "butterfly", "traits": TRAIT_VALUES[name]} for name in SPECIES],
                   "lookalikes": [{"a": "finch", "b": "sparrow", "trait": "eye_ring"}], "images": images}
    (root / "traits.json").write_text(json.dumps(description))
    return root, ring_patch


def make_store(root: Path, ring_patch: np.ndarray, tokens: str = "all", preprocess: bool = True) -> Path:
    """Patch tokens of noise with neuron 0 (and its copy, the last neuron) planted on each image's
    eye-ring patch; a CLS token (for ``tokens="all"``) that shouts on neuron 0 so a misaligned
    patch slice would show."""
    rng = np.random.default_rng(1)
    n_prefix = 1 if tokens == "all" else 0
    tokens_itd = (0.3 * rng.normal(size=(N_IMAGES, n_prefix + 9, D))).astype(np.float32)
    tokens_itd[np.arange(N_IMAGES), n_prefix + ring_patch, 0] += 4
    tokens_itd[..., D - 1] = tokens_itd[..., 0]  # a tie: the lower feature index must win
    if n_prefix:
        tokens_itd[:, 0, 0] = 50
    store_from_arrays(root, {"blocks.3": tokens_itd.reshape(-1, D)}, tokens_per_image=n_prefix + 9)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["layers"]["blocks.3"]["layout"] = TokenLayout(n_prefix, GRID, n_prefix > 0).to_dict()
    manifest["tokens"] = tokens
    model_geometry = Preprocess(size_hw=(24, 24), resize=24, resize_mode="shortest", interpolation="bilinear")
    manifest["preprocess"] = model_geometry.to_dict() if preprocess else None
    for i, image in enumerate(manifest["images"]):
        image["source"] = f"{SPECIES[(i // 2) % 2]}/{i:03d}.png"  # as extracted from the benchmark's images/
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
