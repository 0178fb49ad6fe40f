"""A human-readable summary of an activation store."""

from __future__ import annotations

from pathlib import Path

from traitlens.store.reader import ActivationStore


def _bytes_on_disk(store: ActivationStore, layer: str) -> int:
    return sum((store.root / file).stat().st_size for file in store.layer(layer).shard_files)


def summarize_store(root: str | Path) -> str:
    store = ActivationStore(root)
    manifest = store.manifest
    lines = [
        f"store {store.root}",
        f"  model    {manifest['model']['spec']}  (weights {manifest['model']['weights_fingerprint'][:12]})",
        f"  data     {manifest['dataset']['path']}  ({manifest['dataset']['kind']}, {store.n_images} images, "
        f"{manifest['n_skipped']} skipped)",
        f"  tokens   {manifest['tokens']}, {manifest['dtype']}",
    ]
    for entry in manifest["skipped"]:
        lines.append(f"  skipped  {entry['source']}: {entry['reason']}")
    for name in store.layer_names:
        layer = store.layer(name)
        stats = store.stats(name)
        disk = _bytes_on_disk(store, name)
        per_token = disk / layer.n_tokens if layer.n_tokens else 0.0
        lines.append(
            f"  layer {name}: width {layer.width}, grid {layer.layout.grid_hw[0]}x{layer.layout.grid_hw[1]}, "
            f"{layer.tokens_per_image} tokens/image, {layer.n_tokens} tokens in {len(layer.shard_files)} shards, "
            f"{per_token:.1f} bytes/token on disk, mean norm {stats.mean_norm:.3f}"
        )
    return "\n".join(lines)
