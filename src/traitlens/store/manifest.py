"""The store's manifest: what was extracted, from what, and where each shard is.

Written last, so a store with a manifest is complete. Relative paths keep a store movable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlens.backbones.layout import TokenLayout
from traitlens.errors import StoreError
from traitlens.json_config import read_json_config
from traitlens.store.files import MANIFEST

FORMAT = "traitlens.activations"
VERSION = 1


def manifest_header() -> dict[str, Any]:
    """The fields every manifest starts with: format, version, and the software that wrote it."""
    import torch

    import traitlens

    return {"format": FORMAT, "version": VERSION, "software": {"traitlens": traitlens.__version__, "torch": torch.__version__}}


@dataclass(frozen=True)
class StoredLayer:
    """One layer in a store: its width, token layout, and shard files (relative to the root)."""

    name: str
    width: int
    layout: TokenLayout
    tokens_per_image: int
    shard_files: tuple[str, ...]
    shard_rows: tuple[int, ...]
    patch_label_files: tuple[str, ...] | None

    @property
    def n_tokens(self) -> int:
        return sum(self.shard_rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "layout": self.layout.to_dict(),
            "tokens_per_image": self.tokens_per_image,
            "n_tokens": self.n_tokens,
            "shards": [{"file": f, "rows": r} for f, r in zip(self.shard_files, self.shard_rows, strict=True)],
            "patch_labels": list(self.patch_label_files) if self.patch_label_files is not None else None,
            "stats": f"layers/{self.name}/stats.json",
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> StoredLayer:
        labels = data.get("patch_labels")
        return cls(
            name=name,
            width=int(data["width"]),
            layout=TokenLayout.from_dict(data["layout"]),
            tokens_per_image=int(data["tokens_per_image"]),
            shard_files=tuple(shard["file"] for shard in data["shards"]),
            shard_rows=tuple(int(shard["rows"]) for shard in data["shards"]),
            patch_label_files=tuple(labels) if labels is not None else None,
        )


def read_manifest(root: Path) -> dict[str, Any]:
    """The raw manifest of a complete store, checked for format and version."""
    path = root / MANIFEST
    hint = " (extraction unfinished: run the same command again to resume)" if (root / "job.json").is_file() else ""
    return read_json_config(path, FORMAT, "activation store manifest", StoreError,
                            f"no activation store at {root}: {MANIFEST} missing{hint}", VERSION)
