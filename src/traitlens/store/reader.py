"""Read access to a complete activation store: ordered by image, or shuffled for training."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from traitlens.errors import StoreError
from traitlens.store.files import stats_path
from traitlens.store.manifest import StoredLayer, read_manifest
from traitlens.store.shuffle import ShuffleConfig, ShuffledBatches
from traitlens.store.stats import LayerStats, StatsAccumulator


@dataclass(frozen=True)
class StoredImage:
    source: str
    label: str | None


class ActivationStore:
    """A store written by ``traitlens extract``. Shards are memory-mapped, never loaded whole."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest: dict[str, Any] = read_manifest(self.root)
        self.layers = {name: StoredLayer.from_dict(name, data) for name, data in self.manifest["layers"].items()}
        self.images = [StoredImage(entry["source"], entry["label"]) for entry in self.manifest["images"]]
        self._shards: dict[str, list[np.ndarray]] = {}

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @cached_property
    def class_names(self) -> list[str] | None:
        return self.manifest["dataset"]["class_names"]

    def layer(self, key: str | int) -> StoredLayer:
        """A stored layer by name or by index into the stored layers (negative from the end)."""
        names = self.layer_names
        text = str(key)
        if text in self.layers:
            return self.layers[text]
        if text.lstrip("-").isdigit() and -len(names) <= int(text) < len(names):
            return self.layers[names[int(text)]]
        raise StoreError(f"layer {text!r} is not in the store at {self.root}; stored layers: {', '.join(names)}")

    def shards(self, key: str | int) -> list[np.ndarray]:
        """The layer's shards as read-only memory maps of shape (rows, width)."""
        layer = self.layer(key)
        if layer.name not in self._shards:
            arrays = []
            for file, rows in zip(layer.shard_files, layer.shard_rows, strict=True):
                array = np.load(self.root / file, mmap_mode="r") if rows else np.zeros((0, layer.width), self.manifest["dtype"])
                if array.shape != (rows, layer.width):
                    raise StoreError(f"shard {file} has shape {array.shape}, manifest says ({rows}, {layer.width})")
                arrays.append(array)
            self._shards[layer.name] = arrays
        return self._shards[layer.name]

    def image_tokens(self, key: str | int, image: int) -> np.ndarray:
        """Tokens of one image at a layer, (tokens_per_image, width), in the store's dtype."""
        layer = self.layer(key)
        if not 0 <= image < self.n_images:
            raise StoreError(f"image {image} out of range 0..{self.n_images - 1}")
        bounds = np.cumsum((0, *layer.shard_rows))
        row = image * layer.tokens_per_image
        shard = int(np.searchsorted(bounds, row, side="right")) - 1
        start = row - int(bounds[shard])
        return np.asarray(self.shards(key)[shard][start : start + layer.tokens_per_image])

    def iter_images(self, key: str | int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shard by shard in image order: (image indices (n,), tokens (n, tokens_per_image, width))."""
        layer = self.layer(key)
        first = 0
        for shard in self.shards(key):
            n = len(shard) // layer.tokens_per_image
            yield np.arange(first, first + n), np.asarray(shard).reshape(n, layer.tokens_per_image, layer.width)
            first += n

    def patch_labels(self, key: str | int) -> np.ndarray | None:
        """Majority mask label per patch, (n_images, n_patches) int32, -1 where an image had no
        mask; ``None`` when the source had no masks."""
        layer = self.layer(key)
        if layer.patch_label_files is None:
            return None
        return np.concatenate([np.load(self.root / file) for file in layer.patch_label_files])

    def stats(self, key: str | int) -> LayerStats:
        """Per-dimension mean and std and the mean token norm, as computed during extraction."""
        layer = self.layer(key)
        return LayerStats.from_dict(json.loads(stats_path(self.root, layer.name).read_text()))

    def compute_stats(self, key: str | int) -> LayerStats:
        """The same statistics recomputed with one streaming pass over the shards."""
        import torch

        layer = self.layer(key)
        accumulator = StatsAccumulator.empty(layer.width)
        for shard in self.shards(key):
            for start in range(0, len(shard), 65536):
                accumulator.add(torch.from_numpy(np.array(shard[start : start + 65536])))
        return accumulator.finish()

    def shuffled(self, key: str | int, config: ShuffleConfig) -> ShuffledBatches:
        """Endless shuffled float32 batches; see :mod:`traitlens.store.shuffle`."""
        return ShuffledBatches(self.shards(key), config)
