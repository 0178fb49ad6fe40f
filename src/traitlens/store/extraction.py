"""``traitlens extract``: run a backbone over an image source and store layer tokens in shards.

The images are cut into shards of ``images_per_shard`` consecutive source images. Each shard is
held whole in memory and written atomically, arrays first, then its JSON record, so a killed run
resumes by skipping the shards whose record exists and ends with the same bytes as an
uninterrupted run. In image order each layer's file is streamed to a temporary file on a writer
thread as batches arrive (so the writing overlaps the next forward) and moved into place when the
shard is whole; with ``row_order`` ``shuffled`` the rows are permuted once the shard is whole (see
:mod:`traitlens.store.row_order`) and then written.
Workers of a torchrun job take every ``world_size``-th shard; the main worker writes the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from traitlens.atomic import NpyStream, atomic_save_npy, atomic_write_json, remove_temp_files
from traitlens.backbones import Backbone, Layer, TokenSelection, load_backbone, parse_spec
from traitlens.backbones.layout import TOKEN_SELECTIONS
from traitlens.data import ImageSource, UnreadableImageError, open_image_source, patch_labels
from traitlens.distributed import Workers, workers_from_env
from traitlens.errors import DataError, LayerError, StoreError
from traitlens.output_folder import claim_output_folder, refuse_another_job
from traitlens.store.checked import read_json_object
from traitlens.store.files import (
    JOB,
    MANIFEST,
    acts_path,
    patch_labels_path,
    shard_record_path,
    stats_path,
)
from traitlens.store.manifest import STORE_DTYPES, StoredLayer, manifest_header, read_manifest
from traitlens.store.reader import NO_PATCH_LABEL, read_patch_labels, read_shard
from traitlens.store.row_order import ROW_ORDERS, RowOrder, RowOrderName
from traitlens.store.stats import StatsAccumulator
from traitlens.version import __version__

log = logging.getLogger(__name__)

StoreDtype = Literal["float16", "float32"]
# One shard's arrays (all layers) are held in memory while it fills; this bounds that.
TARGET_SHARD_BYTES = 512 * 2**20
# Recorded in the manifest with the row order, so a store names its own permutation.
ROW_ORDER_SEED = 0


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
    overwrite: bool = False  # replace an earlier extraction in ``out`` instead of resuming it
    # shuffled: rows permuted within each shard, so SAE training reads well-mixed batches as
    # contiguous runs; every traitlens reader still sees image order where it needs it
    row_order: RowOrderName = "image"

    def __post_init__(self) -> None:
        if not self.layers or not all(isinstance(name, str) and name.strip() for name in self.layers):
            raise StoreError(f"layers must name at least one layer, without empty names; got {list(self.layers)}")
        if self.tokens not in TOKEN_SELECTIONS:
            raise StoreError(f"tokens must be one of {', '.join(TOKEN_SELECTIONS)}, got {self.tokens!r}")
        if self.dtype not in STORE_DTYPES:
            raise StoreError(f"the store dtype must be one of {', '.join(STORE_DTYPES)}, got {self.dtype!r}")
        if self.row_order not in ROW_ORDERS:
            raise StoreError(f"the row order must be one of {', '.join(ROW_ORDERS)}, got {self.row_order!r}")
        for name, value in (("batch size", self.batch_size), ("images per shard", self.images_per_shard)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise StoreError(f"{name} must be an integer of at least 1, got {value!r}")

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
    streams: dict[str, NpyStream] = field(default_factory=dict)
    """Each layer's shard file being written as batches arrive (image order only), so the writing
    overlaps the next forward; given up (the shard written whole) when an image is skipped."""
    pending: list[Future[None]] = field(default_factory=list)
    """The writer thread's work for this shard (statistics, appends), in the order it was given."""


def store_row_order(config: ExtractConfig) -> RowOrder:
    return RowOrder("shuffled", ROW_ORDER_SEED) if config.row_order == "shuffled" else RowOrder("image")


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
            skipped.append((index, str(error)))
            continue
        pixels.append(backbone.preprocess.image(image))
        masks.append(backbone.preprocess.mask(mask) if mask is not None else None)
        kept.append(index)
    pixels_bchw = torch.stack(pixels) if pixels else torch.empty(0)
    return _PreparedBatch(kept, pixels_bchw, masks, skipped)


def _job_identity(config: ExtractConfig, backbone: Backbone, source: ImageSource, layers: Sequence[str],
                  images_per_shard: int) -> dict[str, Any]:
    """Everything that decides the store's bytes; a resume must match it exactly."""
    job = config.to_dict()
    del job["out"], job["overwrite"]
    job.update(
        layers=list(layers),
        images_per_shard=images_per_shard,
        weights_fingerprint=backbone.weights_fingerprint(),
        dataset_fingerprint=source.fingerprint(),
        n_source_images=len(source),
        traitlens_version=__version__,
    )
    return job


def _claim_folder(config: ExtractConfig, workers: Workers) -> bool:
    """Apply the output policy to ``--out`` (main worker); True when it holds an earlier extraction."""
    if not workers.is_main:
        return False
    return claim_output_folder(config.out, "extract", overwrite=config.overwrite, resumable=True,
                               own_files=(JOB, MANIFEST), error=StoreError)


def _check_job(root: Path, job: dict[str, Any], resumed: bool, workers: Workers) -> bool:
    """Write ``job.json``, or check that the earlier extraction being resumed is this same job;
    True when the store is already complete."""
    path = root / JOB
    if workers.is_main:
        if resumed and path.is_file():
            existing = read_json_object(path, "extraction job file").data
            refuse_another_job(root, "a store", existing, job, StoreError)
            remove_temp_files(root)
        elif (root / MANIFEST).exists():
            raise StoreError(f"{root} holds an activation store that traitlens extract did not write (no {JOB}); "
                             "use another --out")
        else:
            atomic_write_json(path, job)
    workers.barrier()
    return (root / MANIFEST).is_file()


class _Extraction:
    """One worker's part of an extraction job."""

    def __init__(self, config: ExtractConfig, backbone: Backbone, source: ImageSource, layers: Sequence[Layer],
                 device: torch.device) -> None:
        self.config = config
        self.backbone = backbone
        self.source = source
        self.layers = list(layers)
        self.device = device
        self.want_masks = source.has_masks
        self.root = config.out
        self.row_order = store_row_order(config)

    def run(self, shards: Sequence[ShardPlan], show_progress: bool) -> None:
        todo = [plan for plan in shards if not shard_record_path(self.root, plan.index).is_file()]
        total = sum(plan.stop - plan.start for plan in todo)
        # disable=None: no bar when stderr is not a terminal (a log file, a pipe)
        with (tqdm(total=total, unit="img", desc="extract", disable=None if show_progress else True) as progress,
              ThreadPoolExecutor(max_workers=1) as self._writer):
            buffer: _ShardBuffer | None = None
            try:
                for plan, batch in self._batches(todo):
                    if buffer is None or buffer.plan != plan:
                        if buffer is not None:
                            self._write(buffer)
                        buffer = self._empty_buffer(plan)
                    self._add(buffer, batch)
                    progress.update(len(batch.indices) + len(batch.skipped))
                if buffer is not None:
                    self._write(buffer)
            except BaseException:
                if buffer is not None:
                    self._give_up_streams(buffer)
                raise

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
            if not self.row_order.shuffled:  # a shuffled shard's rows are known only when it is whole
                n_rows = (plan.stop - plan.start) * layer.layout.tokens_per_image(self.config.tokens)
                try:
                    buffer.streams[layer.name] = NpyStream(acts_path(self.root, layer.name, plan.index), n_rows,
                                                           layer.width, np.dtype(self.config.dtype))
                except BaseException:
                    self._give_up_streams(buffer)
                    raise
        return buffer

    def _give_up_streams(self, buffer: _ShardBuffer) -> None:
        for work in buffer.pending:
            work.exception()  # waits (no stream is closed under an append); an error is raised by _write
        for stream in buffer.streams.values():
            stream.abandon()
        buffer.streams.clear()

    def _add(self, buffer: _ShardBuffer, batch: _PreparedBatch) -> None:
        buffer.skipped.extend(batch.skipped)
        if batch.skipped and buffer.streams:  # fewer rows than planned: the shard is written whole instead
            self._give_up_streams(buffer)
        if not batch.indices:
            return
        buffer.kept.extend(batch.indices)
        names = [layer.name for layer in self.layers]
        tokens = self.backbone.tokens(batch.pixels_bchw.to(self.device), names)
        for layer in self.layers:
            selected_btd = layer.layout.select(tokens[layer.name], self.config.tokens)
            # cast first: for a ViT's sliced (non-contiguous) selection the cast is then the one copy
            stored_nd = selected_btd.to(getattr(torch, self.config.dtype)).reshape(-1, layer.width)
            acts_nd = np.ascontiguousarray(stored_nd.cpu().numpy())
            buffer.acts[layer.name].append(acts_nd)
            # on the writer thread, in order (so the float64 sums are the same): overlapped with the next forward
            buffer.pending.append(self._writer.submit(buffer.stats[layer.name].add, torch.from_numpy(acts_nd)))
            if layer.name in buffer.streams:
                buffer.pending.append(self._writer.submit(buffer.streams[layer.name].append, acts_nd))
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
        for work in buffer.pending:
            work.result()  # a failed write fails the job here
        for layer in self.layers:
            parts = buffer.acts[layer.name]
            n_rows = sum(len(part) for part in parts)
            stream = buffer.streams.get(layer.name)
            if stream is not None and stream.written == stream.n_rows == n_rows:
                stream.commit()  # its blocks are already on disk
            else:
                # C order, as documented: a CNN's single batch would otherwise keep its transposed layout
                acts_nd = np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, layer.width), dtype=self.config.dtype)
                # one in-memory gather; the statistics were summed in image order, so they do not change
                stored_order = self.row_order.stored_order(index, len(acts_nd))
                if stored_order is not None:
                    acts_nd = acts_nd[stored_order]
                if stream is not None:
                    stream.abandon()
                atomic_save_npy(acts_path(self.root, layer.name, index), acts_nd)
            if self.want_masks:
                label_parts = buffer.labels[layer.name]
                labels_bp = np.concatenate(label_parts) if label_parts else np.zeros((0, layer.layout.n_patches), np.int32)
                atomic_save_npy(patch_labels_path(self.root, layer.name, index), labels_bp)
            record["layers"][layer.name] = {"rows": n_rows, "stats": buffer.stats[layer.name].to_dict()}
        atomic_write_json(shard_record_path(self.root, index), record)


@dataclass(frozen=True)
class _ShardRecord:
    """A complete shard's JSON record, read back and checked against its plan."""

    index: int
    kept: list[int]
    skipped: list[tuple[int, str]]
    rows: dict[str, int]
    stats: dict[str, StatsAccumulator]


def _redo_hint(error: StoreError, record: Path) -> StoreError:
    """A damaged shard of an unfinished store is redone by deleting its record and resuming."""
    return StoreError(f"{error}; delete {record} and run the same command again to extract that shard again")


def _read_record(root: Path, plan: ShardPlan, layers: Sequence[Layer], tokens: TokenSelection) -> _ShardRecord:
    path = shard_record_path(root, plan.index)
    if not path.is_file():
        raise StoreError(f"shard {plan.index} of {root} is missing after extraction; run the command again to resume")
    try:
        fields = read_json_object(path, "shard record")
        span = (fields.integer("index"), fields.integer("start"), fields.integer("stop"))
        if span != (plan.index, plan.start, plan.stop):
            raise StoreError(f"{path} describes shard {span[0]} (images {span[1]}..{span[2] - 1}), "
                             f"not shard {plan.index} (images {plan.start}..{plan.stop - 1})")
        kept = fields.integers("images")
        skipped = [(entry.integer("index"), entry.text("reason")) for entry in fields.children("skipped")]
        if kept != sorted(kept) or sorted(kept + [index for index, _ in skipped]) != list(range(plan.start, plan.stop)):
            raise StoreError(f"{path} does not list each of images {plan.start}..{plan.stop - 1} once, as kept or skipped")
        layer_fields = fields.child("layers")
        rows, stats = {}, {}
        for layer in layers:
            entry = layer_fields.child(layer.name)
            rows[layer.name] = entry.integer("rows")
            stats[layer.name] = StatsAccumulator.from_fields(entry.child("stats"), layer.width)
            expected = len(kept) * layer.layout.tokens_per_image(tokens)
            if rows[layer.name] != expected or stats[layer.name].count + stats[layer.name].n_nonfinite != expected:
                raise StoreError(f"{path}: layer {layer.name} counts {rows[layer.name]} rows; {len(kept)} images "
                                 f"make {expected}")
    except StoreError as error:
        raise _redo_hint(error, path) from error
    return _ShardRecord(plan.index, kept, skipped, rows, stats)


def _check_arrays(root: Path, stored: StoredLayer, dtype: str) -> None:
    """Each shard's arrays, as the finished store's readers will read them (a resumed job reuses
    arrays written by an earlier run)."""
    for shard in range(len(stored.shard_files)):
        try:
            read_shard(root, stored, shard, dtype)
            if stored.patch_label_files is not None:
                read_patch_labels(root, stored, shard)
        except StoreError as error:
            raise _redo_hint(error, shard_record_path(root, shard)) from error


def _finalize(config: ExtractConfig, job: dict[str, Any], backbone: Backbone, source: ImageSource,
              layers: Sequence[Layer], shards: Sequence[ShardPlan]) -> None:
    """Check every shard, then write the statistics and, last, the manifest."""
    root = config.out
    records = [_read_record(root, plan, layers, config.tokens) for plan in shards]
    skipped = [(index, reason) for record in records for index, reason in record.skipped]
    if len(skipped) == len(source):
        first = skipped[0][1].splitlines()[0] if skipped else "none"
        raise DataError(f"none of the {len(source)} images of {config.data} could be read ({first}); nothing was stored")
    stored_layers = {}
    for layer in layers:
        stored_layers[layer.name] = StoredLayer(
            name=layer.name, width=layer.width, layout=layer.layout,
            tokens_per_image=layer.layout.tokens_per_image(config.tokens),
            shard_files=tuple(str(acts_path(root, layer.name, p.index).relative_to(root)) for p in shards),
            shard_rows=tuple(record.rows[layer.name] for record in records),
            patch_label_files=tuple(str(patch_labels_path(root, layer.name, p.index).relative_to(root)) for p in shards)
            if source.has_masks else None,
        )
        _check_arrays(root, stored_layers[layer.name], config.dtype)
    for _, reason in skipped:
        log.warning("skipping %s", reason)
    for layer in layers:
        stats = StatsAccumulator.empty(layer.width)
        for record in records:
            stats.merge(record.stats[layer.name])
        finished = stats.finish()
        atomic_write_json(stats_path(root, layer.name), finished.to_dict())
        if finished.n_nonfinite:
            log.warning("%d tokens of layer %s are NaN/Inf in %s (overflow? try --dtype float32)",
                        finished.n_nonfinite, layer.name, config.dtype)
    images = [{"source": source.records[i].source, "label": source.records[i].label, "shard": record.index}
              for record in records for i in record.kept]
    manifest = {
        **manifest_header(store_row_order(config)),
        "job": job,
        "model": {"spec": config.model, "weights": job["weights"], "pretrained": config.pretrained,
                  "weights_fingerprint": job["weights_fingerprint"], "class_names": backbone.class_names},
        "preprocess": backbone.preprocess.to_dict(),
        "dataset": {"path": str(config.data), "kind": source.kind, "fingerprint": job["dataset_fingerprint"],
                    "class_names": source.class_names, "mask_names": source.mask_names},
        "tokens": config.tokens, "dtype": config.dtype,
        "n_images": len(images), "n_skipped": len(skipped),
        "layers": {name: stored.to_dict() for name, stored in stored_layers.items()}, "images": images,
        "skipped": [{"source": source.records[index].source, "reason": reason} for index, reason in skipped],
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
    parse_spec(config.model)  # a typo in the spec fails before any data is read
    source = open_image_source(config.data)
    with workers_from_env() as workers:
        resumed = _claim_folder(config, workers)
        if backbone is None:
            backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
        layers = [backbone.layer(name) for name in backbone.resolve_layers(config.layers)]
        _check_tokens(layers, config.tokens, config.model)
        images_per_shard = config.images_per_shard or auto_images_per_shard(layers, config.tokens, config.dtype)
        backbone.to(workers.device(config.device))
        job = _job_identity(config, backbone, source, [layer.name for layer in layers], images_per_shard)
        if _check_job(config.out, job, resumed, workers):
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
