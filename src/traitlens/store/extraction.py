"""``traitlens extract``: run a backbone over an image source and store layer tokens in shards.

The images are cut into shards of ``images_per_shard`` consecutive source images. Each shard is
written whole (arrays first, then its JSON record, all atomically), so a killed run resumes by
skipping the shards whose record exists, and ends with the same bytes as an uninterrupted run.
Workers of a torchrun job take every ``world_size``-th shard; the main worker writes the manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

import traitlens
from traitlens.backbones import Backbone, Layer, TokenSelection, load_backbone, parse_spec
from traitlens.data import ImageSource, UnreadableImageError, open_image_source, patch_labels
from traitlens.distributed import Workers, workers_from_env
from traitlens.errors import DataError, LayerError, StoreError
from traitlens.store.atomic import atomic_save_npy, atomic_write_json, remove_temp_files
from traitlens.store.files import (
    JOB,
    MANIFEST,
    acts_path,
    patch_labels_path,
    shard_record_path,
    stats_path,
)
from traitlens.store.manifest import StoredLayer, manifest_header, read_manifest
from traitlens.store.stats import StatsAccumulator

log = logging.getLogger(__name__)

StoreDtype = Literal["float16", "float32"]
# One shard's arrays (all layers) are held in memory while it fills; this bounds that.
TARGET_SHARD_BYTES = 512 * 2**20
NO_PATCH_LABEL = -1


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract. Saved in the store's ``job.json`` and manifest."""

    model: str
    data: Path
    layers: tuple[str, ...]
    out: Path
    weights: Path | None = None
    pretrained: bool = True
    tokens: TokenSelection = "patch"
    dtype: StoreDtype = "float16"
    batch_size: int = 32
    strict: bool = False
    images_per_shard: int | None = None  # None: sized so one shard of all layers is ~512 MiB
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("data", "out", "weights"):
            data[key] = str(data[key]) if data[key] is not None else None
        data["layers"] = list(self.layers)
        return data


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int
    stop: int


@dataclass
class _PreparedBatch:
    indices: list[int]
    pixels_bchw: torch.Tensor
    masks: list[np.ndarray | None]
    skipped: list[tuple[int, str]]


@dataclass
class _ShardBuffer:
    """What one shard has gathered so far."""

    plan: ShardPlan
    acts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    labels: dict[str, list[np.ndarray]] = field(default_factory=dict)
    stats: dict[str, StatsAccumulator] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def plan_shards(n_images: int, images_per_shard: int) -> list[ShardPlan]:
    starts = range(0, n_images, images_per_shard)
    return [ShardPlan(i, start, min(start + images_per_shard, n_images)) for i, start in enumerate(starts)]


def auto_images_per_shard(layers: Sequence[Layer], tokens: TokenSelection, dtype: StoreDtype) -> int:
    itemsize = np.dtype(dtype).itemsize
    bytes_per_image = sum(layer.layout.tokens_per_image(tokens) * layer.width * itemsize for layer in layers)
    return max(1, TARGET_SHARD_BYTES // bytes_per_image)


def _prepare_batch(source: ImageSource, indices: Sequence[int], backbone: Backbone, want_masks: bool, strict: bool) -> _PreparedBatch:
    pixels, kept, masks, skipped = [], [], [], []
    for index in indices:
        try:
            image = source.load_image(index)
            mask = source.load_mask(index) if want_masks else None
        except UnreadableImageError as error:
            if strict:
                raise DataError(f"{error} (--strict)") from error
            log.warning("skipping %s", error)
            skipped.append((index, str(error)))
            continue
        pixels.append(backbone.preprocess.image(image))
        masks.append(backbone.preprocess.mask(mask) if mask is not None else None)
        kept.append(index)
    pixels_bchw = torch.stack(pixels) if pixels else torch.empty(0)
    return _PreparedBatch(kept, pixels_bchw, masks, skipped)


def _job_identity(config: ExtractConfig, backbone: Backbone, source: ImageSource, layers: Sequence[str], images_per_shard: int) -> dict[str, Any]:
    """Everything that decides the store's bytes; a resume must match it exactly."""
    job = config.to_dict()
    del job["out"]
    job.update(
        layers=list(layers),
        images_per_shard=images_per_shard,
        weights_fingerprint=backbone.weights_fingerprint(),
        dataset_fingerprint=source.fingerprint(),
        n_source_images=len(source),
        traitlens_version=traitlens.__version__,
    )
    return job


def _claim_output(root: Path, job: dict[str, Any], workers: Workers) -> bool:
    """Create or check ``job.json``; True when the store is already complete."""
    path = root / JOB
    if workers.is_main:
        if path.is_file():
            existing = json.loads(path.read_text())
            if existing != job:
                differing = sorted(key for key in set(existing) | set(job) if existing.get(key) != job.get(key))
                raise StoreError(f"{root} holds a store from a different job ({', '.join(differing)} differ); use another --out or delete it")
            remove_temp_files(root)
        elif root.exists() and any(root.iterdir()):
            raise StoreError(f"{root} exists and is not an activation store; use an empty or new --out")
        else:
            atomic_write_json(path, job)
    workers.barrier()
    return (root / MANIFEST).is_file()


class _Extraction:
    """One worker's part of an extraction job."""

    def __init__(self, config: ExtractConfig, backbone: Backbone, source: ImageSource, layers: Sequence[Layer], device: torch.device) -> None:
        self.config = config
        self.backbone = backbone
        self.source = source
        self.layers = list(layers)
        self.device = device
        self.want_masks = source.kind == "segmentation"
        self.root = config.out

    def run(self, shards: Sequence[ShardPlan], show_progress: bool) -> None:
        todo = [plan for plan in shards if not shard_record_path(self.root, plan.index).is_file()]
        total = sum(plan.stop - plan.start for plan in todo)
        with tqdm(total=total, unit="img", desc="extract", disable=not show_progress) as progress:
            buffer: _ShardBuffer | None = None
            for plan, batch in self._batches(todo):
                if buffer is None or buffer.plan != plan:
                    if buffer is not None:
                        self._write(buffer)
                    buffer = self._empty_buffer(plan)
                self._add(buffer, batch)
                progress.update(len(batch.indices) + len(batch.skipped))
            if buffer is not None:
                self._write(buffer)

    def _batches(self, shards: Sequence[ShardPlan]) -> Iterator[tuple[ShardPlan, _PreparedBatch]]:
        """Batches in order, the next one decoded on a thread while the model runs on this one."""
        chunks = [(plan, list(range(start, min(start + self.config.batch_size, plan.stop))))
                  for plan in shards for start in range(plan.start, plan.stop, self.config.batch_size)]
        with ThreadPoolExecutor(max_workers=1) as pool:
            def submit(chunk: list[int]) -> Future[_PreparedBatch]:
                return pool.submit(_prepare_batch, self.source, chunk, self.backbone, self.want_masks, self.config.strict)

            pending = submit(chunks[0][1]) if chunks else None
            for position, (plan, _) in enumerate(chunks):
                assert pending is not None
                batch = pending.result()
                pending = submit(chunks[position + 1][1]) if position + 1 < len(chunks) else None
                yield plan, batch

    def _empty_buffer(self, plan: ShardPlan) -> _ShardBuffer:
        buffer = _ShardBuffer(plan)
        for layer in self.layers:
            buffer.acts[layer.name] = []
            buffer.labels[layer.name] = []
            buffer.stats[layer.name] = StatsAccumulator.empty(layer.width)
        return buffer

    def _add(self, buffer: _ShardBuffer, batch: _PreparedBatch) -> None:
        buffer.skipped.extend(batch.skipped)
        if not batch.indices:
            return
        buffer.kept.extend(batch.indices)
        names = [layer.name for layer in self.layers]
        tokens = self.backbone.tokens(batch.pixels_bchw.to(self.device), names)
        for layer in self.layers:
            selected_btd = layer.layout.select(tokens[layer.name], self.config.tokens)
            stored_nd = selected_btd.reshape(-1, layer.width).to(getattr(torch, self.config.dtype))
            buffer.stats[layer.name].add(stored_nd)
            buffer.acts[layer.name].append(stored_nd.cpu().numpy())
            if self.want_masks:
                buffer.labels[layer.name].append(self._patch_labels(batch.masks, layer))

    def _patch_labels(self, masks: Sequence[np.ndarray | None], layer: Layer) -> np.ndarray:
        labels_bp = np.full((len(masks), layer.layout.n_patches), NO_PATCH_LABEL, dtype=np.int32)
        n_names = len(self.source.mask_names or ())
        for row, mask in enumerate(masks):
            if mask is not None:
                labels_bp[row] = patch_labels(mask, layer.layout.grid_hw, max(n_names, int(mask.max()) + 1))
        return labels_bp

    def _write(self, buffer: _ShardBuffer) -> None:
        index = buffer.plan.index
        record: dict[str, Any] = {
            "index": index, "start": buffer.plan.start, "stop": buffer.plan.stop,
            "images": buffer.kept,
            "skipped": [{"index": i, "reason": reason} for i, reason in buffer.skipped],
            "layers": {},
        }
        for layer in self.layers:
            parts = buffer.acts[layer.name]
            acts_nd = np.concatenate(parts) if parts else np.zeros((0, layer.width), dtype=self.config.dtype)
            atomic_save_npy(acts_path(self.root, layer.name, index), acts_nd)
            if self.want_masks:
                label_parts = buffer.labels[layer.name]
                labels_bp = np.concatenate(label_parts) if label_parts else np.zeros((0, layer.layout.n_patches), np.int32)
                atomic_save_npy(patch_labels_path(self.root, layer.name, index), labels_bp)
            record["layers"][layer.name] = {"rows": int(acts_nd.shape[0]), "stats": buffer.stats[layer.name].to_dict()}
        atomic_write_json(shard_record_path(self.root, index), record)


def _finalize(config: ExtractConfig, job: dict[str, Any], backbone: Backbone, source: ImageSource,
              layers: Sequence[Layer], shards: Sequence[ShardPlan]) -> None:
    root = config.out
    records = []
    for plan in shards:
        path = shard_record_path(root, plan.index)
        if not path.is_file():
            raise StoreError(f"shard {plan.index} of {root} is missing after extraction; run the command again to resume")
        records.append(json.loads(path.read_text()))
    stored_layers: dict[str, Any] = {}
    for layer in layers:
        stats = StatsAccumulator.empty(layer.width)
        for record in records:
            stats.merge(StatsAccumulator.from_dict(record["layers"][layer.name]["stats"]))
        finished = stats.finish()
        atomic_write_json(stats_path(root, layer.name), finished.to_dict())
        if finished.n_nonfinite:
            log.warning("%d tokens of layer %s are NaN/Inf in %s (overflow? try --dtype float32)",
                        finished.n_nonfinite, layer.name, config.dtype)
        stored = StoredLayer(
            name=layer.name, width=layer.width, layout=layer.layout,
            tokens_per_image=layer.layout.tokens_per_image(config.tokens),
            shard_files=tuple(str(acts_path(root, layer.name, p.index).relative_to(root)) for p in shards),
            shard_rows=tuple(int(r["layers"][layer.name]["rows"]) for r in records),
            patch_label_files=tuple(str(patch_labels_path(root, layer.name, p.index).relative_to(root)) for p in shards)
            if source.kind == "segmentation" else None,
        )
        stored_layers[layer.name] = stored.to_dict()
    images = [{"source": source.records[i].source, "label": source.records[i].label, "shard": r["index"]}
              for r in records for i in r["images"]]
    skipped = [{"source": source.records[s["index"]].source, "reason": s["reason"]} for r in records for s in r["skipped"]]
    manifest = {
        **manifest_header(),
        "job": job,
        "model": {"spec": config.model, "weights": job["weights"], "pretrained": config.pretrained,
                  "weights_fingerprint": job["weights_fingerprint"], "class_names": backbone.class_names},
        "preprocess": backbone.preprocess.to_dict(),
        "dataset": {"path": str(config.data), "kind": source.kind, "fingerprint": job["dataset_fingerprint"],
                    "class_names": source.class_names, "mask_names": source.mask_names},
        "tokens": config.tokens, "dtype": config.dtype,
        "n_images": len(images), "n_skipped": len(skipped),
        "layers": stored_layers, "images": images, "skipped": skipped,
    }
    atomic_write_json(root / MANIFEST, manifest)


def _check_tokens(layers: Sequence[Layer], tokens: TokenSelection, spec: str) -> None:
    for layer in layers:
        if tokens == "cls" and not layer.layout.has_cls:
            raise LayerError(f"layer {layer.name} of {spec} has no CLS token; use --tokens patch or --tokens all")


def extract(config: ExtractConfig, show_progress: bool = True, backbone: Backbone | None = None) -> dict[str, Any]:
    """Run the extraction job (resuming if ``config.out`` holds an unfinished one); returns the manifest.

    ``backbone``, when given, is used instead of loading ``config.model`` (it must be that model).
    """
    if config.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {config.batch_size}")
    parse_spec(config.model)  # a typo in the spec fails before any data is read
    source = open_image_source(config.data)
    if backbone is None:
        backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    layers = [backbone.layer(name) for name in backbone.resolve_layers(config.layers)]
    _check_tokens(layers, config.tokens, config.model)
    images_per_shard = config.images_per_shard or auto_images_per_shard(layers, config.tokens, config.dtype)
    with workers_from_env() as workers:
        backbone.to(workers.device(config.device))
        job = _job_identity(config, backbone, source, [layer.name for layer in layers], images_per_shard)
        complete = _claim_output(config.out, job, workers)
        if complete:
            log.info("%s is already complete", config.out)
            return read_manifest(config.out)
        shards = plan_shards(len(source), images_per_shard)
        mine = shards[workers.rank :: workers.world_size]
        _Extraction(config, backbone, source, layers, backbone.device).run(mine, show_progress and workers.is_main)
        workers.barrier()
        if workers.is_main:
            _finalize(config, job, backbone, source, layers, shards)
        workers.barrier()
        return read_manifest(config.out)
