"""Where each file of an activation store lives (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
JOB = "job.json"


def shard_record_path(root: Path, shard: int) -> Path:
    """The JSON record that marks a shard complete; written after the shard's arrays."""
    return root / "shards" / f"{shard:05d}.json"


def layer_dir(root: Path, layer: str) -> Path:
    return root / "layers" / layer


def acts_path(root: Path, layer: str, shard: int) -> Path:
    return layer_dir(root, layer) / f"acts_{shard:05d}.npy"


def patch_labels_path(root: Path, layer: str, shard: int) -> Path:
    return layer_dir(root, layer) / f"patch_labels_{shard:05d}.npy"


def stats_path(root: Path, layer: str) -> Path:
    return layer_dir(root, layer) / "stats.json"
