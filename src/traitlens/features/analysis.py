"""``traitlens features``: what each SAE latent fires on, from one ordered pass over a stored layer.

The directory ``out`` holds:

- ``latent_indptr.npy`` (width + 1,) int64, ``latent_rows.npy`` (nnz,) int64 and
  ``latent_values.npy`` (nnz,) float32: every nonzero latent activation, column-major (CSC).
  Latent ``j`` fired on store rows ``rows[indptr[j]:indptr[j + 1]]`` (ascending) with those
  values; a store row is token ``row % tokens_per_image`` of image ``row // tokens_per_image``
  (rows in image order, read so whatever order the store's shards keep them in).
- ``latent_statistics.safetensors``: per latent ``count_w``, ``frequency_w``, ``mean_activation_w``
  (over firing tokens), ``max_activation_w``; ``top_images_wk``/``top_image_values_wk`` (image
  activation = the max over the image's stored tokens) and ``top_tokens_wk``/``top_token_values_wk``
  (padded with -1 and 0); ``class_mean_wc`` and ``class_ap_wc`` (the image activation as a one-vs-rest
  score for each class); ``label_ap_wl`` (patch-token activation as a score for each mask label but
  background, over the patches of every store image with a mask, positives as
  :mod:`traitlens.features.patch_positives` defines them from the source's masks);
  ``class_prevalence_c`` and ``label_prevalence_l``, the share of labelled images in each class and
  of those patches positive for each label: the AP a latent unrelated to them gets.
- ``job.json`` (the settings, written first: with the SHA-256 of the SAE's weights and of the
  store's manifest and the device type, so a resume with another SAE, a store extracted again or
  another device is refused), ``columns.json`` (written once the column files are in place) and
  ``features.json``: the manifest, written last.

The folder follows :mod:`traitlens.output_folder`: an unfinished or finished folder of the same job
is resumed (or returned), one of another job or command refused, ``overwrite`` starts afresh.

The pass writes the nonzeros of each chunk of ``chunk_tokens`` tokens atomically and skips chunks
already written, so a killed run resumes; everything after it is computed from the files on disk, so
a resumed run ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save
from tqdm import tqdm

from traitlens.atomic import atomic_write_bytes, atomic_write_json, remove_temp_files
from traitlens.digests import file_sha256
from traitlens.distributed import Workers
from traitlens.features.association import (
    BlockNonzeros,
    class_average_precision,
    class_means,
    image_activations,
    label_average_precision,
    token_statistics,
    top_images,
    top_tokens,
)
from traitlens.features.directory import read_features_manifest, read_statistics
from traitlens.features.files import (
    COLUMNS_RECORD,
    FORMAT,
    INDPTR,
    JOB,
    MANIFEST,
    ROWS,
    STATISTICS,
    VALUES,
    VERSION,
    FeaturesError,
    chunk_path,
)
from traitlens.features.labels import LabelTargets, label_targets
from traitlens.features.patch_positives import (
    DEFAULT_MIN_COVERAGE,
    check_min_coverage,
    describe_positives,
)
from traitlens.features.sparse_columns import (
    SparseColumns,
    assemble_columns,
    columns_complete,
    read_chunk,
    read_columns_record,
    write_chunk,
)
from traitlens.json_config import read_json_config
from traitlens.output_folder import claim_output_folder, refuse_another_job
from traitlens.sae.io import WEIGHTS, SAELoadError, load_sae_with_config
from traitlens.sae.layer import stored_sae_layer
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ActivationStore
from traitlens.store.files import MANIFEST as STORE_MANIFEST
from traitlens.store.manifest import StoredLayer
from traitlens.store.row_order import ImageOrderedShard

# Latents are summarized in blocks whose dense (latents x images) activations hold at most this many elements.
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class FeaturesConfig:
    """What to analyze. ``layer`` defaults to the layer the SAE was trained on (from its config)."""

    sae: Path
    """Saved SAE directory."""
    acts: Path
    """Activation store holding the layer."""
    out: Path
    """Features directory (an unfinished one is resumed)."""
    layer: str | None = None
    """Stored layer name or index."""
    top_k: int = 16
    """Top images and top tokens kept per latent."""
    batch_size: int = 4096
    """Tokens encoded at once."""
    chunk_tokens: int = 1 << 18
    """Tokens per chunk file of the encoding pass (the unit of resumption)."""
    device: str = "cpu"
    """Where the SAE encodes: cpu, cuda, cuda:N or auto."""
    min_coverage: float = DEFAULT_MIN_COVERAGE
    """A patch is positive for a mask label from this share of its pixels (see patch_positives)."""
    overwrite: bool = False
    """Start afresh in an ``out`` that holds an earlier features job (never another command's folder)."""
    show_progress: bool = True

    def __post_init__(self) -> None:
        """The settings that need no file read, so a bad one fails before any work."""
        for name in ("top_k", "batch_size", "chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FeaturesError(f"{name} must be an integer of at least 1, got {value!r}")
        check_min_coverage(self.min_coverage, FeaturesError)


def sae_weights_sha256(sae_dir: str | Path) -> str:
    """The SHA-256 (hex) of the weights file of the SAE saved in ``sae_dir``: what a features
    directory records as the SAE it was made from (:attr:`LatentFeatures.sae_sha256`)."""
    path = Path(sae_dir) / WEIGHTS
    try:
        return file_sha256(path)
    except OSError as error:
        raise SAELoadError(f"cannot read SAE weights {path}: {error.strerror or error}") from error


def _start_or_resume(out: Path, job: dict[str, Any]) -> bool:
    """Whether ``out`` holds the finished features of ``job``; refuses another job's. A folder
    without a job file (new, or killed before writing it) starts ``job``."""
    if (out / MANIFEST).is_file():
        refuse_another_job(out, "features", read_features_manifest(out)["job"], job, FeaturesError)
        return True
    if (out / JOB).is_file():
        previous = read_json_config(out / JOB, FORMAT + ".job", "features job", FeaturesError, f"{out / JOB} missing")
        refuse_another_job(out, "features", previous, job, FeaturesError)
    else:
        atomic_write_json(out / JOB, job)
    return False


def _read_rows(shards: list[ImageOrderedShard], bounds: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Store rows ``start..stop-1`` of a layer (they may span shards) as float32 (n, width)."""
    parts = []
    shard = int(np.searchsorted(bounds, start, side="right")) - 1
    while start < stop:
        end = min(stop, int(bounds[shard + 1]))
        parts.append(np.array(shards[shard][start - bounds[shard] : end - bounds[shard]], dtype=np.float32))
        start, shard = end, shard + 1
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def _encode_chunk(sae: SparseAutoencoder, shards: list[ImageOrderedShard], bounds: np.ndarray, start: int, stop: int,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Nonzero latents of store rows ``start..stop-1``, row-major: (rows, cols, values, tokens
    skipped as NaN/Inf, which count as firing nowhere)."""
    device = sae.W_enc.device
    rows, cols, values, n_nonfinite = [], [], [], 0
    for first in range(start, stop, batch_size):
        x_nd = torch.from_numpy(_read_rows(shards, bounds, first, min(first + batch_size, stop))).to(device)
        finite_n = torch.isfinite(x_nd).all(dim=1)
        n_bad = int((~finite_n).sum())
        if n_bad:
            n_nonfinite += n_bad
            x_nd[~finite_n] = 0
        latents_nw = sae.encode(x_nd)
        if n_bad:
            latents_nw[~finite_n] = 0
        row_n, col_n = (latents_nw != 0).nonzero(as_tuple=True)
        rows.append((row_n + first).cpu().numpy())
        cols.append(col_n.cpu().numpy())
        values.append(latents_nw[row_n, col_n].float().cpu().numpy())
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values), n_nonfinite


def _write_columns(config: FeaturesConfig, sae: SparseAutoencoder, store: ActivationStore, layer: StoredLayer) -> None:
    shards = store.image_ordered_shards(layer.name)
    bounds = np.cumsum((0, *layer.shard_rows))
    starts = range(0, layer.n_tokens, config.chunk_tokens)
    paths = [chunk_path(config.out, index) for index in range(len(starts))]
    for path in paths:
        if path.is_file():
            read_chunk(path, sae.config.width)  # a damaged chunk of a killed run is refused before any work
    progress = tqdm(total=layer.n_tokens, unit="tok", unit_scale=True, desc="encoding", disable=not config.show_progress)
    for path, start in zip(paths, starts, strict=True):
        stop = min(start + config.chunk_tokens, layer.n_tokens)
        if not path.is_file():
            write_chunk(path, *_encode_chunk(sae, shards, bounds, start, stop, config.batch_size))
        progress.update(stop - start)
    progress.close()
    assemble_columns(paths, sae.config.width, config.out)


def _image_classes(store: ActivationStore) -> np.ndarray:
    """Class index of every stored image (n_images,), -1 for an image without a known class."""
    index_of = {name: index for index, name in enumerate(store.class_names or [])}
    return np.array([index_of.get(image.label, -1) if image.label is not None else -1 for image in store.images], dtype=np.int64)


def _statistics(config: FeaturesConfig, store: ActivationStore, layer: StoredLayer, columns: SparseColumns,
                labels: LabelTargets) -> dict[str, np.ndarray]:
    width, k, n_images = columns.width, config.top_k, store.n_images
    class_i = _image_classes(store)
    n_classes = len(store.class_names or [])
    targets, n_labels = labels.targets, len(labels.names)
    arrays: dict[str, np.ndarray] = {
        "count_w": np.zeros(width, np.int64), "sum_w": np.zeros(width, np.float64), "max_activation_w": np.zeros(width, np.float32),
        "top_images_wk": np.zeros((width, k), np.int64), "top_image_values_wk": np.zeros((width, k), np.float32),
        "top_tokens_wk": np.zeros((width, k), np.int64), "top_token_values_wk": np.zeros((width, k), np.float32),
        "class_mean_wc": np.zeros((width, n_classes)), "class_ap_wc": np.zeros((width, n_classes)),
        "label_ap_wl": np.zeros((width, n_labels)),
    }
    step = max(1, _BLOCK_ELEMENTS // n_images)
    progress = tqdm(total=width, unit="latent", desc="statistics", disable=not config.show_progress)
    for start in range(0, width, step):
        stop = min(start + step, width)
        block = BlockNonzeros(stop - start, *columns.block(start, stop))
        latents = slice(start, stop)
        arrays["count_w"][latents], arrays["sum_w"][latents], arrays["max_activation_w"][latents] = token_statistics(block)
        arrays["top_tokens_wk"][latents], arrays["top_token_values_wk"][latents] = top_tokens(block, k)
        activations_bi = image_activations(block, n_images, layer.tokens_per_image)
        arrays["top_images_wk"][latents], arrays["top_image_values_wk"][latents] = top_images(activations_bi, k)
        if n_classes:
            arrays["class_mean_wc"][latents] = class_means(activations_bi, class_i, n_classes)
            arrays["class_ap_wc"][latents] = class_average_precision(activations_bi, class_i, n_classes)
        if targets is not None and n_labels:
            arrays["label_ap_wl"][latents] = label_average_precision(block, targets)
        progress.update(stop - start)
    progress.close()
    labelled_i = class_i >= 0
    arrays["class_prevalence_c"] = np.bincount(class_i[labelled_i], minlength=n_classes) / max(int(labelled_i.sum()), 1)
    arrays["label_prevalence_l"] = (targets.positives_ql.mean(0) if targets is not None and len(targets.positives_ql)
                                    else np.zeros(n_labels))
    counts_w = arrays["count_w"]
    arrays["frequency_w"] = counts_w / layer.n_tokens
    arrays["mean_activation_w"] = arrays.pop("sum_w") / np.maximum(counts_w, 1)
    return arrays


def analyze_features(config: FeaturesConfig) -> Path:
    """Encode every stored token of the layer with the SAE and write the latents' activations and
    statistics to ``config.out`` (see the module docstring); returns ``config.out``. A finished
    directory of the same job is returned as it is."""
    claim_output_folder(config.out, "features", overwrite=config.overwrite, resumable=True, own_files=(JOB, MANIFEST),
                        error=FeaturesError)
    device = Workers(0, 1).device(config.device)
    sae, saved = load_sae_with_config(config.sae, device=device)
    sae.eval()
    store = ActivationStore(config.acts)
    layer = stored_sae_layer(store, saved, sae, config.sae, config.layer, FeaturesError)
    if layer.n_tokens == 0:
        raise FeaturesError(f"layer {layer.name} of {config.acts} holds no tokens")
    # The device and the store's manifest are part of the job: resuming on another device, or
    # after the store was extracted again at the same path, would mix chunks of two encodings.
    job = {"format": FORMAT + ".job", "sae": str(config.sae.resolve()), "sae_sha256": sae_weights_sha256(config.sae),
           "acts": str(config.acts.resolve()), "acts_manifest_sha256": file_sha256(store.root / STORE_MANIFEST),
           "layer": layer.name, "device": device.type, "top_k": config.top_k,
           "batch_size": config.batch_size, "chunk_tokens": config.chunk_tokens, "min_coverage": config.min_coverage}
    if _start_or_resume(config.out, job):
        return config.out
    remove_temp_files(config.out)
    if not columns_complete(config.out):
        _write_columns(config, sae, store, layer)
    columns = SparseColumns(config.out, layer.n_tokens)
    if columns.width != sae.config.width:
        raise FeaturesError(f"the latent columns in {config.out} hold {columns.width} latents, the SAE {sae.config.width}; "
                            "run again with --overwrite")
    labels = label_targets(store, layer, config.min_coverage)
    manifest = _manifest(config, job, sae, store, layer, columns.counts_w, labels)
    statistics_path = config.out / STATISTICS
    if statistics_path.is_file():
        read_statistics(statistics_path, manifest, columns.counts_w)  # kept from a killed run: refused if damaged
    else:
        arrays = _statistics(config, store, layer, columns, labels)
        atomic_write_bytes(statistics_path, save({name: np.ascontiguousarray(array) for name, array in sorted(arrays.items())}))
    atomic_write_json(config.out / MANIFEST, manifest)
    return config.out


def _manifest(config: FeaturesConfig, job: dict[str, Any], sae: SparseAutoencoder, store: ActivationStore,
              layer: StoredLayer, counts_w: np.ndarray, labels: LabelTargets) -> dict[str, Any]:
    record = read_columns_record(config.out)
    if record["nnz"] != int(counts_w.sum()):
        raise FeaturesError(f"damaged features file {config.out / COLUMNS_RECORD} ({record['nnz']} nonzeros, the columns hold "
                            f"{int(counts_w.sum())}); run again with --overwrite")
    positives = None if labels.targets is None else {
        "rule": describe_positives(config.min_coverage), "min_coverage": config.min_coverage,
        "n_images": len(labels.targets.images_m), "n_patches": len(labels.targets.positives_ql)}
    return {
        "format": FORMAT, "version": VERSION, "job": job,
        "sae": job["sae"], "acts": job["acts"], "layer": layer.name, "sae_architecture": sae.config.to_dict(),
        "width": sae.config.width, "d_in": sae.config.d_in,
        "n_tokens": layer.n_tokens, "n_images": store.n_images, "tokens_per_image": layer.tokens_per_image,
        "tokens": store.tokens, "layout": layer.layout.to_dict(),
        "class_names": store.class_names, "mask_names": None if store.dataset.mask_names is None else list(store.dataset.mask_names),
        "label_names": labels.names, "label_positives": positives, "label_note": labels.note, "top_k": config.top_k,
        "files": {"indptr": INDPTR, "rows": ROWS, "values": VALUES, "statistics": STATISTICS},
        "summary": {"nnz": record["nnz"], "alive": int((counts_w > 0).sum()), "dead": int((counts_w == 0).sum()),
                    "mean_l0": record["nnz"] / layer.n_tokens, "n_nonfinite_tokens": record["n_nonfinite"]},
    }
