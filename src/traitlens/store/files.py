"""Where each file of an activation store lives (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path, PurePath

from traitlens.errors import StoreError

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


def inside_store(root: Path, relative: str | PurePath, what: str) -> Path:
    """``root / relative``, refused (one StoreError line) unless it stays inside the store folder
    once ``..`` and symbolic links are resolved: a store's files name only its own files, so a
    damaged or hostile manifest cannot make a reader load arrays from anywhere else."""
    if PurePath(relative).is_absolute():
        raise StoreError(f"{what} {str(relative)!r} of the store at {root} is an absolute path; "
                         "store files are named relative to the store folder")
    path = root / relative
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError) as cause:  # a link loop, a NUL byte in the name
        raise StoreError(f"{what} {str(relative)!r} of the store at {root} cannot be resolved: {cause}") from cause
    if not inside:
        raise StoreError(f"{what} {str(relative)!r} of the store at {root} points outside the store folder")
    return path
