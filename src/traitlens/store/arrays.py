"""Stores made from activations computed elsewhere (another tool, a synthetic benchmark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from traitlens.atomic import atomic_save_npy, atomic_write_json
from traitlens.backbones.layout import TokenLayout
from traitlens.errors import StoreError
from traitlens.store.files import MANIFEST, acts_path, stats_path
from traitlens.store.manifest import StoredLayer, manifest_header
from traitlens.store.row_order import RowOrder
from traitlens.store.stats import StatsAccumulator

ROWS_PER_SHARD = 1 << 18


def store_from_arrays(root: Path, layers: dict[str, np.ndarray], tokens_per_image: int = 1, source: str = "arrays") -> Path:
    """Write (tokens, width) arrays as a store with the same layout ``extract`` writes.

    Tokens are grouped into "images" of ``tokens_per_image`` consecutive rows with no patch grid,
    stored as given (row order ``image``); the manifest records ``source`` as the model spec so the
    store says where it came from.
    """
    if (root / MANIFEST).exists():
        raise StoreError(f"{root} already holds a store")
    if tokens_per_image < 1 or not layers or any(array.ndim != 2 or array.shape[1] < 1 for array in layers.values()):
        raise StoreError("store_from_arrays needs at least one (tokens, width) array and tokens_per_image of at least 1")
    n_rows = {len(array) for array in layers.values()}
    if len(n_rows) != 1 or not next(iter(n_rows)) or next(iter(n_rows)) % tokens_per_image:
        raise StoreError("every layer needs the same number of rows, a non-zero multiple of tokens_per_image")
    n_images = next(iter(n_rows)) // tokens_per_image
    dtype = {np.dtype(array.dtype).name for array in layers.values()}
    if len(dtype) != 1 or not dtype <= {"float16", "float32"}:
        raise StoreError(f"arrays must all be float16 or all float32, got {sorted(dtype)}")
    entries = {}
    for name, array in layers.items():
        files, rows = [], []
        stats = StatsAccumulator.empty(array.shape[1])
        for shard, start in enumerate(range(0, len(array), ROWS_PER_SHARD)):
            part = np.ascontiguousarray(array[start : start + ROWS_PER_SHARD])
            atomic_save_npy(acts_path(root, name, shard), part)
            stats.add(torch.from_numpy(part))
            files.append(str(acts_path(root, name, shard).relative_to(root)))
            rows.append(len(part))
        atomic_write_json(stats_path(root, name), stats.finish().to_dict())
        layout = TokenLayout(n_prefix=0, grid_hw=(1, tokens_per_image), has_cls=False)
        entries[name] = StoredLayer(name, array.shape[1], layout, tokens_per_image, tuple(files), tuple(rows), None).to_dict()
    manifest = {
        **manifest_header(RowOrder("image")),
        "job": {"source": source}, "model": {"spec": source, "weights": None, "pretrained": False,
                                             "weights_fingerprint": "", "class_names": None},
        "preprocess": None, "dataset": {"path": None, "kind": source, "fingerprint": "", "class_names": None, "mask_names": None},
        "tokens": "all", "dtype": dtype.pop(), "n_images": n_images, "n_skipped": 0, "layers": entries,
        "images": [{"source": f"{source}/{i}", "label": None, "shard": i * tokens_per_image // ROWS_PER_SHARD} for i in range(n_images)],
        "skipped": [],
    }
    atomic_write_json(root / MANIFEST, manifest)
    return root
