"""The store's manifest: what was extracted, from what, and where each shard is.

Written last, so a store with a manifest is complete. Relative paths keep a store movable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from traitlens.backbones.layout import TOKEN_SELECTIONS, TokenLayout, TokenSelection
from traitlens.errors import StoreError
from traitlens.store.checked import Fields, read_json_object
from traitlens.store.files import JOB, MANIFEST
from traitlens.store.row_order import ROW_ORDERS, RowOrder

FORMAT = "traitlens.activations"
# Version 2 added ``row_order``, and only stores with shuffled rows are written as version 2 (a
# version 1 reader would take their rows for image order); image-ordered stores stay version 1,
# readable by any traitlens.
READ_VERSIONS = (1, 2)
STORE_DTYPES = ("float16", "float32")


def manifest_header(row_order: RowOrder) -> dict[str, Any]:
    """The fields every manifest starts with: format, version, the software that wrote it, and,
    for shuffled rows, the row order."""
    import torch

    from traitlens.version import __version__

    software = {"traitlens": __version__, "torch": torch.__version__}
    if not row_order.shuffled:
        return {"format": FORMAT, "version": 1, "software": software}
    return {"format": FORMAT, "version": 2, "software": software, **row_order.to_dict()}


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
    def from_fields(cls, name: str, fields: Fields, tokens: TokenSelection, n_images: int) -> StoredLayer:
        """The layer ``name`` of a manifest whose ``tokens`` and ``n_images`` are already read,
        checked to describe exactly ``n_images`` images of whole token rows."""
        layout_fields = fields.child("layout")
        grid_h, grid_w = layout_fields.integers("grid_hw", length=2, minimum=1)
        layout = TokenLayout(layout_fields.integer("n_prefix"), (grid_h, grid_w), layout_fields.flag("has_cls"))
        if layout.has_cls and layout.n_prefix < 1:
            raise StoreError(f"{fields.where}: {fields.prefix}layout has a CLS token but no prefix tokens")
        tokens_per_image = fields.integer("tokens_per_image", minimum=1)
        if tokens_per_image != layout.tokens_per_image(tokens):
            raise StoreError(f"{fields.where}: {fields.prefix}tokens_per_image is {tokens_per_image}, but its layout "
                             f"holds {layout.tokens_per_image(tokens)} {tokens} tokens per image")
        shards = fields.children("shards")
        rows = tuple(shard.integer("rows") for shard in shards)
        if not shards or any(count % tokens_per_image for count in rows) or sum(rows) != n_images * tokens_per_image:
            raise StoreError(f"{fields.where}: {fields.prefix}shards hold {list(rows)} rows; expected whole images "
                             f"adding up to {n_images} images x {tokens_per_image} tokens")
        if fields.integer("n_tokens") != sum(rows):
            raise StoreError(f"{fields.where}: {fields.prefix}n_tokens is {fields.value('n_tokens')}, its shards hold {sum(rows)}")
        labels = fields.optional_texts("patch_labels")
        if labels is not None and len(labels) != len(shards):
            raise StoreError(f"{fields.where}: {fields.prefix}patch_labels names {len(labels)} files for {len(shards)} shards")
        return cls(name=name, width=fields.integer("width", minimum=1), layout=layout, tokens_per_image=tokens_per_image,
                   shard_files=tuple(shard.text("file") for shard in shards), shard_rows=rows,
                   patch_label_files=tuple(labels) if labels is not None else None)


@dataclass(frozen=True)
class StoredImage:
    source: str
    label: str | None


@dataclass(frozen=True)
class StoredModel:
    """The model a store was extracted with."""

    spec: str
    weights: str | None
    pretrained: bool
    weights_fingerprint: str
    class_names: tuple[str, ...] | None


@dataclass(frozen=True)
class StoredDataset:
    """The image source a store was extracted from."""

    path: str | None
    kind: str
    fingerprint: str
    class_names: tuple[str, ...] | None
    mask_names: tuple[str, ...] | None


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: ``data`` is the JSON as written, every field listed in docs/formats.md
    checked for type and consistency; the other fields are its typed parts, which code outside
    ``store`` reads instead of the JSON."""

    data: dict[str, Any]
    layers: dict[str, StoredLayer]
    images: tuple[StoredImage, ...]
    model: StoredModel
    dataset: StoredDataset
    tokens: TokenSelection
    """Which tokens of each image the store keeps (``patch``, ``cls`` or ``all``)."""
    row_order: RowOrder
    """How each shard orders its rows: by image, or shuffled (version 1 stores: by image)."""


def _check_preprocess(fields: Fields | None) -> None:
    if fields is None:
        return
    fields.integers("size_hw", length=2, minimum=1)
    fields.integer("resize", minimum=1)
    fields.numbers("mean", 3)
    if not (fields.numbers("std", 3) > 0).all():
        raise StoreError(f"{fields.where}: {fields.prefix}std must be above 0")
    fields.text("interpolation")
    fields.choice("resize_mode", ("shortest", "squash"))


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _read_model(fields: Fields) -> StoredModel:
    return StoredModel(fields.text("spec"), fields.optional_text("weights"), fields.flag("pretrained"),
                       fields.text("weights_fingerprint"), _names(fields.optional_texts("class_names")))


def _read_dataset(fields: Fields) -> StoredDataset:
    return StoredDataset(fields.optional_text("path"), fields.text("kind"), fields.text("fingerprint"),
                         _names(fields.optional_texts("class_names")), _names(fields.optional_texts("mask_names")))


def _check_header(fields: Fields, path: Path) -> int:
    """The manifest's version, checked to be one this traitlens reads."""
    if fields.value("format") != FORMAT:
        raise StoreError(f"{path} is not a traitlens activation store manifest")
    version = fields.integer("version")
    if version not in READ_VERSIONS:
        raise StoreError(f"{path} has activation store manifest version {version}; this traitlens reads versions "
                         f"{' and '.join(map(str, READ_VERSIONS))}")
    return version


def _read_row_order(fields: Fields, version: int) -> RowOrder:
    if version == 1:  # written before rows could be stored shuffled
        if "row_order" in fields.keys():
            raise StoreError(f"{fields.where}: row_order is a version 2 field, but the manifest says version 1")
        return RowOrder("image")
    name = fields.choice("row_order", ROW_ORDERS)
    if name == "image":
        if "row_order_seed" in fields.keys():
            raise StoreError(f"{fields.where}: row_order_seed is given, but rows are in image order")
        return RowOrder("image")
    return RowOrder("shuffled", fields.integer("row_order_seed"))


def load_manifest(root: Path) -> Manifest:
    """The manifest of a complete store, every field checked (one StoreError line otherwise)."""
    path = root / MANIFEST
    if not path.is_file():
        hint = " (extraction unfinished: run the same command again to resume)" if (root / JOB).is_file() else ""
        raise StoreError(f"no activation store at {root}: {MANIFEST} missing{hint}")
    fields = read_json_object(path, "activation store manifest")
    version = _check_header(fields, path)
    fields.child("job")
    model = _read_model(fields.child("model"))
    _check_preprocess(fields.optional_child("preprocess"))
    dataset = _read_dataset(fields.child("dataset"))
    tokens = cast(TokenSelection, fields.choice("tokens", TOKEN_SELECTIONS))
    fields.choice("dtype", STORE_DTYPES)
    row_order = _read_row_order(fields, version)
    n_images = fields.integer("n_images", minimum=1)
    images = fields.children("images")
    skipped = fields.children("skipped")
    if len(images) != n_images or len(skipped) != fields.integer("n_skipped"):
        raise StoreError(f"{path}: lists {len(images)} images and {len(skipped)} skipped, but counts "
                         f"{n_images} and {fields.value('n_skipped')}")
    for entry in skipped:
        entry.text("source")
        entry.text("reason")
    layer_fields = fields.child("layers")
    if not layer_fields.keys():
        raise StoreError(f"{path}: no layers are stored")
    layers = {name: StoredLayer.from_fields(name, layer_fields.child(name), tokens, n_images) for name in layer_fields.keys()}
    stored = tuple(StoredImage(entry.text("source"), entry.optional_text("label")) for entry in images)
    return Manifest(fields.data, layers, stored, model, dataset, tokens, row_order)


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a complete store as its JSON (checked as by :func:`load_manifest`)."""
    return load_manifest(root).data
