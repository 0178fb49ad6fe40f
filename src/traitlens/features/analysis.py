"""``traitlens features``: what each SAE latent fires on, from one ordered pass over a stored layer.

The directory ``out`` holds:

- ``latent_indptr.npy`` (width + 1,) int64, ``latent_rows.npy`` (nnz,) int64 and
  ``latent_values.npy`` (nnz,) float32: every nonzero latent activation, column-major (CSC).
  Latent ``j`` fired on store rows ``rows[indptr[j]:indptr[j + 1]]`` (ascending) with those
  values; a store row is token ``row % tokens_per_image`` of image ``row // tokens_per_image``.
- ``latent_statistics.safetensors``: per latent ``count_w``, ``frequency_w``, ``mean_activation_w``
  (over firing tokens), ``max_activation_w``; ``top_images_wk``/``top_image_values_wk`` (image
  activation = the max over the image's stored tokens) and ``top_tokens_wk``/``top_token_values_wk``
  (padded with -1 and 0); ``class_mean_wc`` and ``class_ap_wc`` (the image activation as a one-vs-rest
  score for each class); ``label_ap_wl`` (patch-token activation as a score for each mask label but
  background); ``class_prevalence_c`` and ``label_prevalence_l``, the share of labelled images in
  each class and of masked patches showing each label: the AP a latent unrelated to them gets.
- ``job.json`` (the settings, written first: with the SHA-256 of the SAE's weights and of the
  store's manifest and the device type, so a resume with another SAE, a store extracted again or
  another device is refused), ``columns.json`` (written once the column files are in place) and
  ``features.json``: the manifest, written last.

The pass writes the nonzeros of each chunk of ``chunk_tokens`` tokens atomically and skips chunks
already written, so a killed run resumes; everything after it is computed from the files on disk, so
a resumed run ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from traitlens.distributed import Workers
from traitlens.features.association import (
    BlockNonzeros,
    PatchTargets,
    class_average_precision,
    class_means,
    image_activations,
    label_average_precision,
    token_statistics,
    top_images,
    top_tokens,
)
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
from traitlens.features.sparse_columns import (
    SparseColumns,
    assemble_columns,
    columns_complete,
    write_chunk,
)
from traitlens.json_config import read_json_config
from traitlens.output_folder import check_output_folder
from traitlens.sae.io import WEIGHTS, SAELoadError, load_sae_with_config
from traitlens.sae.layer import stored_sae_layer
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ActivationStore
from traitlens.store.atomic import atomic_write_json, commit, remove_temp_files, temp_path
from traitlens.store.files import MANIFEST as STORE_MANIFEST
from traitlens.store.manifest import StoredLayer

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
    show_progress: bool = True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sae_weights_sha256(sae_dir: str | Path) -> str:
    """The SHA-256 (hex) of the weights file of the SAE saved in ``sae_dir``: what a features
    directory records as the SAE it was made from (:attr:`LatentFeatures.sae_sha256`)."""
    path = Path(sae_dir) / WEIGHTS
    try:
        return _file_sha256(path)
    except OSError as error:
        raise SAELoadError(f"cannot read SAE weights {path}: {error.strerror or error}") from error


def _check_config(config: FeaturesConfig) -> None:
    """The settings that need no file read, so a bad one fails before any work."""
    if config.top_k < 1 or config.batch_size < 1 or config.chunk_tokens < 1:
        raise FeaturesError("top_k, batch_size and chunk_tokens must be at least 1")
    check_output_folder(config.out, FeaturesError)


def read_features_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a finished features directory; one-line errors for anything else."""
    hint = " (analysis unfinished: run the same command again to resume)" if (root / JOB).is_file() else ""
    return read_json_config(root / MANIFEST, FORMAT, "features manifest", FeaturesError,
                            f"no features at {root}: {MANIFEST} missing{hint}", VERSION)


def _check_same_job(out: Path, previous: dict[str, Any], job: dict[str, Any]) -> None:
    if previous != job:
        changed = sorted(key for key in set(job) | set(previous) if job.get(key) != previous.get(key))
        raise FeaturesError(f"{out} holds features of another job (different {', '.join(changed)}); "
                            "choose another --out or delete it")


def _claim_directory(out: Path, job: dict[str, Any]) -> None:
    """Start or resume the job in ``out``; refuse a directory that holds something else."""
    job_file = out / JOB
    if job_file.is_file():
        previous = read_json_config(job_file, FORMAT + ".job", "features job", FeaturesError, f"{job_file} missing")
        _check_same_job(out, previous, job)
        return
    if out.exists() and any(out.iterdir()):
        raise FeaturesError(f"{out} is not empty and holds no features job; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FeaturesError(f"cannot create --out {out}: {error.strerror or error}") from error
    atomic_write_json(job_file, job)


def _read_rows(shards: list[np.ndarray], bounds: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Store rows ``start..stop-1`` of a layer (they may span shards) as float32 (n, width)."""
    parts = []
    shard = int(np.searchsorted(bounds, start, side="right")) - 1
    while start < stop:
        end = min(stop, int(bounds[shard + 1]))
        parts.append(np.array(shards[shard][start - bounds[shard] : end - bounds[shard]], dtype=np.float32))
        start, shard = end, shard + 1
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def _encode_chunk(sae: SparseAutoencoder, shards: list[np.ndarray], bounds: np.ndarray, start: int, stop: int,
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
    shards = store.shards(layer.name)
    bounds = np.cumsum((0, *layer.shard_rows))
    starts = range(0, layer.n_tokens, config.chunk_tokens)
    paths = [chunk_path(config.out, index) for index in range(len(starts))]
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


def _patch_targets(store: ActivationStore, layer: StoredLayer) -> tuple[PatchTargets | None, list[str]]:
    """The patch-label targets (None when the store has no patch tokens or no masks) and the
    names of their labels (every label but background 0)."""
    kind = store.manifest["tokens"]
    labels_ip = store.patch_labels(layer.name) if kind != "cls" else None
    if labels_ip is None:
        return None, []
    first = layer.layout.n_prefix if kind == "all" else 0
    n_patches = layer.layout.n_patches
    if layer.tokens_per_image - first != n_patches or labels_ip.shape != (store.n_images, n_patches):
        raise FeaturesError(f"layer {layer.name} of {store.root} stores {layer.tokens_per_image} {kind} tokens per image and "
                            f"patch labels of shape {labels_ip.shape}, which do not match its layout "
                            f"({layer.layout.n_prefix} prefix + {n_patches} patches)")
    names = list(store.manifest["dataset"].get("mask_names") or ["background"])
    n_labels = max(len(names), int(labels_ip.max(initial=0)) + 1)
    names += [f"label {label}" for label in range(len(names), n_labels)]
    masked_i = (labels_ip >= 0).all(axis=1)
    positives_ql = labels_ip[masked_i].reshape(-1)[:, None] == np.arange(1, n_labels)[None, :]
    targets = PatchTargets(np.flatnonzero(masked_i).astype(np.int64), positives_ql, store.n_images,
                           layer.tokens_per_image, first, n_patches)
    return targets, names[1:]


def _statistics(config: FeaturesConfig, store: ActivationStore, layer: StoredLayer) -> dict[str, np.ndarray]:
    columns = SparseColumns(config.out)
    width, k, n_images = columns.width, config.top_k, store.n_images
    class_i = _image_classes(store)
    n_classes = len(store.class_names or [])
    targets, label_names = _patch_targets(store, layer)
    n_labels = len(label_names)
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
    _check_config(config)
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
           "acts": str(config.acts.resolve()), "acts_manifest_sha256": _file_sha256(store.root / STORE_MANIFEST),
           "layer": layer.name, "device": device.type, "top_k": config.top_k,
           "batch_size": config.batch_size, "chunk_tokens": config.chunk_tokens}
    if (config.out / MANIFEST).is_file():
        _check_same_job(config.out, read_features_manifest(config.out).get("job") or {}, job)
        return config.out
    _claim_directory(config.out, job)
    remove_temp_files(config.out)
    if not columns_complete(config.out):
        _write_columns(config, sae, store, layer)
    statistics_path = config.out / STATISTICS
    if not statistics_path.is_file():
        arrays = _statistics(config, store, layer)
        temp = temp_path(statistics_path)
        save_file({name: np.ascontiguousarray(array) for name, array in sorted(arrays.items())}, str(temp))
        commit(temp, statistics_path)
    _write_manifest(config, job, sae, store, layer)
    return config.out


def _write_manifest(config: FeaturesConfig, job: dict[str, Any], sae: SparseAutoencoder, store: ActivationStore,
                    layer: StoredLayer) -> None:
    record = json.loads((config.out / COLUMNS_RECORD).read_text())
    counts_w = load_file(str(config.out / STATISTICS))["count_w"]
    _, label_names = _patch_targets(store, layer)
    manifest = {
        "format": FORMAT, "version": VERSION, "job": job,
        "sae": job["sae"], "acts": job["acts"], "layer": layer.name, "sae_architecture": sae.config.to_dict(),
        "width": sae.config.width, "d_in": sae.config.d_in,
        "n_tokens": layer.n_tokens, "n_images": store.n_images, "tokens_per_image": layer.tokens_per_image,
        "tokens": store.manifest["tokens"], "layout": layer.layout.to_dict(),
        "class_names": store.class_names, "mask_names": store.manifest["dataset"].get("mask_names"),
        "label_names": label_names, "top_k": config.top_k,
        "files": {"indptr": INDPTR, "rows": ROWS, "values": VALUES, "statistics": STATISTICS},
        "summary": {"nnz": record["nnz"], "alive": int((counts_w > 0).sum()), "dead": int((counts_w == 0).sum()),
                    "mean_l0": record["nnz"] / layer.n_tokens, "n_nonfinite_tokens": record["n_nonfinite"]},
    }
    atomic_write_json(config.out / MANIFEST, manifest)
