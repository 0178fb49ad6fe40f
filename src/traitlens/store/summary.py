"""A human-readable summary of an activation store, after checking every file it is made of."""

from __future__ import annotations

from pathlib import Path

from traitlens.store.files import inside_store
from traitlens.store.reader import ActivationStore, read_patch_labels


def _bytes_on_disk(store: ActivationStore, name: str) -> int:
    """Bytes of the layer's shards, each shard (and its patch labels, one at a time) checked first."""
    store.shards(name)
    layer = store.layer(name)
    for shard in range(len(layer.patch_label_files or ())):
        read_patch_labels(store.root, layer, shard)
    return sum(inside_store(store.root, file, "shard file").stat().st_size for file in layer.shard_files)


def summarize_store(root: str | Path) -> str:
    store = ActivationStore(root)
    manifest = store.manifest
    lines = [
        f"store {store.root}",
        f"  model    {manifest['model']['spec']}  (weights {manifest['model']['weights_fingerprint'][:12]})",
        f"  data     {manifest['dataset']['path']}  ({manifest['dataset']['kind']}, {store.n_images} images, "
        f"{manifest['n_skipped']} skipped)",
        f"  tokens   {manifest['tokens']}, {manifest['dtype']}",
        "  rows     " + (f"shuffled within each shard (seed {store.row_order.seed})" if store.row_order.shuffled
                         else "image after image"),
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
