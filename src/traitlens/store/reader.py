"""Read access to a complete activation store: ordered by image, or shuffled for training.

Shards may store their rows by image or shuffled (:mod:`traitlens.store.row_order`): ``shards``
gives the rows as stored, for readers that do not care about order; every reader of images
(``image_tokens``, ``iter_images``, ``image_ordered_shards``) sees image order either way.

Every file is read through :mod:`traitlens.store.checked` (typed fields, array headers checked
against the manifest) and named by a path that must stay inside the store folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from traitlens.backbones.layout import TokenSelection
from traitlens.errors import StoreError
from traitlens.store.checked import read_array, read_json_object
from traitlens.store.files import inside_store, stats_path
from traitlens.store.manifest import StoredLayer, load_manifest
from traitlens.store.row_order import ImageOrderedShard, RowOrder
from traitlens.store.shuffle import ShuffleConfig, ShuffledBatches
from traitlens.store.stats import LayerStats, StatsAccumulator

NO_PATCH_LABEL = -1


def read_shard(root: Path, layer: StoredLayer, shard: int, dtype: str) -> np.ndarray:
    """Shard ``shard`` of ``layer`` as a read-only memory map (rows, width) of ``dtype``."""
    path = inside_store(root, layer.shard_files[shard], f"shard file of layer {layer.name}")
    return read_array(path, f"shard of layer {layer.name}", (layer.shard_rows[shard], layer.width), dtype, memory_map=True)


def read_patch_labels(root: Path, layer: StoredLayer, shard: int) -> np.ndarray:
    """Patch labels of the images of shard ``shard``: (images, n_patches) int32, each -1 or more."""
    assert layer.patch_label_files is not None
    what = f"patch labels of layer {layer.name}"
    path = inside_store(root, layer.patch_label_files[shard], f"{what} file")
    shape = (layer.shard_rows[shard] // layer.tokens_per_image, layer.layout.n_patches)
    labels = read_array(path, what, shape, "int32", memory_map=False)
    if labels.size and int(labels.min()) < NO_PATCH_LABEL:
        raise StoreError(f"{what} {path} holds {int(labels.min())}; labels are {NO_PATCH_LABEL} (no mask) or more")
    return labels


class ActivationStore:
    """A store written by ``traitlens extract``. Shards are memory-mapped, never loaded whole."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = load_manifest(self.root)
        self.manifest: dict[str, Any] = manifest.data
        """The manifest's JSON as written (for provenance records); read its parts below."""
        self.layers = manifest.layers
        self.images = list(manifest.images)
        self.model = manifest.model
        self.dataset = manifest.dataset
        self.tokens: TokenSelection = manifest.tokens
        """Which tokens of each image the store keeps."""
        self.row_order: RowOrder = manifest.row_order
        """How each shard orders its rows on disk: by image, or shuffled."""
        self._shards: dict[str, list[np.ndarray]] = {}

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @cached_property
    def class_names(self) -> list[str] | None:
        return None if self.dataset.class_names is None else list(self.dataset.class_names)

    def layer(self, key: str | int) -> StoredLayer:
        """A stored layer by name or by index into the stored layers (negative from the end)."""
        names = self.layer_names
        text = str(key)
        if text in self.layers:
            return self.layers[text]
        if re.fullmatch(r"-?[0-9]+", text) and -len(names) <= int(text) < len(names):
            return self.layers[names[int(text)]]
        raise StoreError(f"layer {text!r} is not in the store at {self.root}; stored layers: {', '.join(names)}")

    def shards(self, key: str | int) -> list[np.ndarray]:
        """The layer's shards as stored: read-only memory maps of shape (rows, width), each shard's
        rows in the store's ``row_order`` (for readers that do not care about order)."""
        layer = self.layer(key)
        if layer.name not in self._shards:
            self._shards[layer.name] = [read_shard(self.root, layer, shard, self.manifest["dtype"])
                                        for shard in range(len(layer.shard_files))]
        return self._shards[layer.name]

    def image_ordered_shards(self, key: str | int) -> list[ImageOrderedShard]:
        """The layer's shards read in image order, sliced like arrays: row ``r`` of the layer (of
        shard after shard) is token ``r % tokens_per_image`` of image ``r // tokens_per_image``."""
        return [ImageOrderedShard(stored_nd, self.row_order, shard) for shard, stored_nd in enumerate(self.shards(key))]

    def image_tokens(self, key: str | int, image: int) -> np.ndarray:
        """Tokens of one image at a layer, (tokens_per_image, width), in the store's dtype."""
        layer = self.layer(key)
        if not 0 <= image < self.n_images:
            raise StoreError(f"image {image} out of range 0..{self.n_images - 1}")
        bounds = np.cumsum((0, *layer.shard_rows))
        row = image * layer.tokens_per_image
        shard = int(np.searchsorted(bounds, row, side="right")) - 1
        start = row - int(bounds[shard])
        return np.asarray(self.image_ordered_shards(key)[shard][start : start + layer.tokens_per_image])

    def iter_images(self, key: str | int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shard by shard in image order: (image indices (n,), tokens (n, tokens_per_image, width));
        a shard stored shuffled is gathered into memory (one shard at a time)."""
        layer = self.layer(key)
        first = 0
        for shard in self.image_ordered_shards(key):
            n = len(shard) // layer.tokens_per_image
            yield np.arange(first, first + n), np.asarray(shard[:]).reshape(n, layer.tokens_per_image, layer.width)
            first += n

    def patch_labels(self, key: str | int) -> np.ndarray | None:
        """Majority mask label per patch, (n_images, n_patches) int32, -1 where an image had no
        mask; ``None`` when the source had no masks."""
        layer = self.layer(key)
        if layer.patch_label_files is None:
            return None
        return np.concatenate([read_patch_labels(self.root, layer, shard) for shard in range(len(layer.patch_label_files))])

    def stats(self, key: str | int) -> LayerStats:
        """Per-dimension mean and std and the mean token norm, as computed during extraction."""
        layer = self.layer(key)
        path = inside_store(self.root, stats_path(self.root, layer.name).relative_to(self.root), "statistics file")
        stats = LayerStats.from_fields(read_json_object(path, f"statistics of layer {layer.name}"), layer.width)
        if stats.count + stats.n_nonfinite != layer.n_tokens:
            raise StoreError(f"statistics {path} count {stats.count + stats.n_nonfinite} tokens; layer {layer.name} "
                             f"stores {layer.n_tokens}")
        return stats

    def compute_stats(self, key: str | int) -> LayerStats:
        """The same statistics recomputed with one streaming pass over the shards, in image order
        (the same sums in the same order whatever the row order)."""
        import torch

        layer = self.layer(key)
        accumulator = StatsAccumulator.empty(layer.width)
        for shard in self.image_ordered_shards(key):
            for start in range(0, len(shard), 65536):
                accumulator.add(torch.from_numpy(np.array(shard[start : start + 65536])))
        return accumulator.finish()

    def shuffled(self, key: str | int, config: ShuffleConfig) -> ShuffledBatches:
        """Endless shuffled float32 batches; see :mod:`traitlens.store.shuffle` (mode ``auto`` reads
        contiguous runs from a store whose rows are shuffled, gathers single rows otherwise)."""
        return ShuffledBatches(self.shards(key), config, rows_preshuffled=self.row_order.shuffled)
