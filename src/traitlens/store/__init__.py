"""Activation stores: sharded ``.npy`` token arrays plus a manifest (see docs/formats.md)."""

from traitlens.store.arrays import store_from_arrays
from traitlens.store.extraction import ExtractConfig, extract
from traitlens.store.manifest import StoredImage
from traitlens.store.reader import ActivationStore
from traitlens.store.shuffle import ShuffleConfig, ShuffledBatches
from traitlens.store.stats import LayerStats

__all__ = [
    "ActivationStore", "ExtractConfig", "LayerStats", "ShuffleConfig", "ShuffledBatches", "StoredImage", "extract",
    "store_from_arrays",
]
