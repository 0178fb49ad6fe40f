"""``traitlens explain``: heatmaps for every image of a source, written to disk with a summary.

Per image ``<relative path without suffix>.npy`` (float32 (H, W) in [0, 1] at the image's own
resolution), ``.png`` (the map over the image) and a small picture for the gallery, then
``index.html`` (:mod:`traitlens.explain.gallery`) and ``summary.json``, written last, so its
presence marks a finished run. Every file is written atomically, into a folder claimed for
explain once the request is checked, before any work (:func:`traitlens.output_folder.claim_output_folder`).

A run resumes batch by batch like every long job (:mod:`traitlens.progress`): each finished
batch leaves its images' summary records, and the summary carries the job.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch
from PIL import Image
from tqdm import tqdm

from traitlens.atomic import atomic_save_npy, atomic_save_png, atomic_write_json
from traitlens.backbones import Backbone, load_backbone
from traitlens.data import ImageSource, open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.distributed import Workers
from traitlens.explain.config import ExplainConfig, ExplainError
from traitlens.explain.contrast import (
    check_class_indices,
    check_n_refs,
    kept_references,
    resolve_class,
)
from traitlens.explain.gallery import write_gallery, write_thumbnail
from traitlens.explain.maps import CamResult, check_class_attention, compute_cams, default_layer
from traitlens.explain.methods import method_by_name
from traitlens.explain.trait_ranking import rank_heads
from traitlens.output_folder import claim_output_folder
from traitlens.overlay import overlay
from traitlens.progress import BatchProgress, fixed_batches
from traitlens.version import __version__

log = logging.getLogger(__name__)

FORMAT = "traitlens.explain"
SUMMARY = "summary.json"


def load_explained_backbone(config: ExplainConfig) -> Backbone:
    """The config's model, with its head replaced by a probe (``config.head``), zero-shot class
    prompts or a text concept when one is given."""
    from traitlens import heads

    backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
    if config.head is not None:
        return heads.load_head_backbone(backbone, config.head)
    if config.zero_shot is not None:
        return heads.zero_shot_backbone(backbone, config.zero_shot, config.template)
    if config.concept is not None:
        return heads.concept_backbone(backbone, config.concept, config.reference)
    return backbone


def output_stems(source: ImageSource) -> list[PurePosixPath]:
    """Per image, its path relative to the output folder without suffix (``sp00/00000001``, as
    the specimens localization score reads); refuses two images that would share files."""
    stems: list[PurePosixPath] = []
    owners: dict[PurePosixPath, str] = {}
    for record in source.records:
        parts = [part for part in PurePosixPath(record.source).parts if part not in ("/", ".", "..")]
        if not parts:
            raise ExplainError(f"image {record.source!r} has no file name to write its map under")
        stem = PurePosixPath(*parts).with_suffix("")
        if stem in owners:
            raise ExplainError(f"images {owners[stem]} and {record.source} would both be written as {stem}.npy")
        owners[stem] = record.source
        stems.append(stem)
    return stems


def _resolve_refs(config: ExplainConfig, class_names: list[str] | None) -> list[int] | Literal["auto"] | None:
    refs = config.explained_refs
    if refs is None or refs == "auto":
        return refs
    indices = [resolve_class(key, class_names, "reference class") for key in refs]
    if len(set(indices)) != len(indices):
        raise ExplainError(f"reference classes repeat: {', '.join(str(key) for key in refs)}")
    return indices


def _check_classes(backbone: Backbone, size_hw: tuple[int, int], target: int | None,
                   refs: list[int] | Literal["auto"] | None, n_refs: int | None) -> None:
    """Refuse classes the head does not have before the first image, not after a progress bar:
    one forward of a blank image tells how many classes the head scores."""
    with torch.no_grad():
        logits = backbone.forward(torch.zeros(1, 3, *size_hw, device=backbone.device))
    if logits.ndim != 2:
        raise ExplainError(f"the head must give one score per class (b, classes), got shape {tuple(logits.shape)}")
    n_classes = logits.shape[1]
    check_class_indices(torch.tensor([] if target is None else [target]), n_classes, "target class")
    if isinstance(refs, list):
        check_class_indices(torch.tensor(refs), n_classes, "reference class")
    elif refs == "auto":
        check_n_refs(n_refs, n_classes)


def _class_name(class_names: list[str] | None, index: int) -> str | None:
    return class_names[index] if class_names is not None and index < len(class_names) else None


def _image_record(config: ExplainConfig, result: CamResult, row: int, source: str, stem: PurePosixPath,
                  image_hw: tuple[int, int], class_names: list[str] | None) -> dict[str, Any]:
    target = int(result.targets_b[row])
    refs = result.refs_bk[row][kept_references(result.refs_bk, result.targets_b)[row]].tolist()
    logits_c = result.logits_bc[row].double().cpu()
    return {
        "source": source, "map": f"{stem}.npy", "overlay": f"{stem}.png", "image_hw": list(image_hw),
        "method": method_by_name(config.method).name, "layer": result.layer,
        "gamma": config.gamma if config.explained_refs is not None else 0.0,
        "target": _class_name(class_names, target), "target_index": target, "target_score": float(logits_c[target]),
        "references": [_class_name(class_names, ref) for ref in refs], "reference_indices": refs,
        "reference_scores": [float(logits_c[ref]) for ref in refs],
    }


def _write_image_outputs(out: Path, stem: PurePosixPath, image: Image.Image, map_hw: torch.Tensor) -> None:
    atomic_save_npy(out / f"{stem}.npy", map_hw.cpu().numpy())
    drawn = overlay(image, map_hw)
    atomic_save_png(out / f"{stem}.png", drawn)
    write_thumbnail(out, stem, image, drawn)


def _class_query_outputs(config: ExplainConfig, backbone: Backbone, result: CamResult, row: int, pixels_1chw: torch.Tensor,
                         stem: PurePosixPath, image: Image.Image, unmap: Any) -> dict[str, Any]:
    """A class-query head's extras for one image: every attention head's map (``<stem>.heads.npy``,
    float16, heads x height x width) and, with ``rank_traits``, the ranked heads with their
    overlays (``<stem>.trait-<rank>.png``)."""
    assert result.head_maps_bkhw is not None and backbone.class_attention is not None
    image_hw = (image.height, image.width)
    head_maps = [unmap(head_map_hw, image_hw) for head_map_hw in result.head_maps_bkhw[row]]
    atomic_save_npy(config.out / f"{stem}.heads.npy", torch.stack(head_maps).half().cpu().numpy())
    extras: dict[str, Any] = {"head_maps": f"{stem}.heads.npy", "n_heads": len(head_maps)}
    if config.rank_traits is not None:
        ranked = rank_heads(backbone.class_attention, pixels_1chw, int(result.targets_b[row]), len(head_maps))
        traits = []
        for rank, (head, probability) in enumerate(ranked[: config.rank_traits], start=1):
            atomic_save_png(config.out / f"{stem}.trait-{rank}.png", overlay(image, head_maps[head]))
            traits.append({"rank": rank, "head": head, "overlay": f"{stem}.trait-{rank}.png",
                           "target_probability_blurred": probability})
        extras["traits"] = traits
    return extras


def _warn_fewer_heads(config: ExplainConfig, result: CamResult) -> None:
    """--rank-traits beyond the head's attention heads keeps them all, said once."""
    if config.rank_traits is not None and result.head_maps_bkhw is not None and config.rank_traits > result.head_maps_bkhw.shape[1]:
        log.warning("--rank-traits %d: the head has %d attention heads; all of them are ranked", config.rank_traits,
                    result.head_maps_bkhw.shape[1])


def _job_identity(config: ExplainConfig, backbone: Backbone, source: ImageSource, layer: str) -> dict[str, Any]:
    """Everything that decides the maps and records; a resumed run must match it exactly (the batch
    size too: batches are the unit a run resumes from)."""
    job = config.to_dict()
    del job["out"]
    job.update(model_spec=backbone.spec, weights_fingerprint=backbone.weights_fingerprint(),
               dataset_fingerprint=source.fingerprint(), n_images=len(source), layer_used=layer, traitlens_version=__version__)
    if config.head is not None:  # the path alone would take a head replaced in place for the same
        from traitlens.heads import head_sha256

        job["head_sha256"] = head_sha256(config.head)
    return job


def _read_batch_records(progress: BatchProgress, batch: int, images: list[int]) -> list[dict[str, Any]] | None:
    """The records a finished batch saved, None when the batch is unfinished."""
    saved = progress.load_json(batch)
    if saved is None:
        return None
    records = saved.get("images")
    if saved.get("indices") != images or not isinstance(records, list) or len(records) != len(images) \
            or not all(isinstance(record, dict) for record in records):
        raise progress.damaged(progress.path(batch, ".json"), "not the records of its images")
    return records


def explain(config: ExplainConfig, backbone: Backbone | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Write every image's map and overlay into ``config.out`` and return the summary.

    ``backbone`` replaces loading ``config.model`` (and ``config.head``); only its ``forward``
    (one score per class) and ``class_names`` are explained, so any head plugs in.
    """
    if backbone is None:
        backbone = load_explained_backbone(config)
    backbone.to(Workers(0, 1).device(config.device))
    preprocess = backbone.preprocess.fitted(config.fit)
    source = open_image_source(config.data)
    stems = output_stems(source)
    method = method_by_name(config.method)
    if method.evidence == "class_attention":
        # a class-query head's maps cover the layer its queries read
        layer = check_class_attention(backbone, method, config.explained_refs is not None, config.layer).layer
    else:
        layer = backbone.resolve_layer(config.layer) if config.layer is not None else default_layer(backbone)
    class_names = backbone.class_names
    target = None if config.explained_target is None else resolve_class(config.explained_target, class_names, "target class")
    refs = _resolve_refs(config, class_names)
    _check_classes(backbone, preprocess.size_hw, target, refs, config.n_refs)
    # claimed only once the request is known to be good: --overwrite must not empty a folder for a bad one
    claim_output_folder(config.out, "explain", overwrite=config.overwrite, resumable=True, error=ExplainError)
    progress = BatchProgress(config.out, "explain maps", _job_identity(config, backbone, source, layer), ExplainError)
    finished = progress.finished(config.out / SUMMARY, FORMAT)
    if finished is not None:
        return finished
    size = config.batch_size
    batches = fixed_batches(len(source), size)
    records = [_read_batch_records(progress, number, images) for number, images in enumerate(batches)]
    todo = [number for number, saved in enumerate(records) if saved is None]
    todo_images = [index for number in todo for index in batches[number]]
    with tqdm(total=len(source), initial=len(source) - len(todo_images), unit="img", desc=f"explain ({config.method})",
              disable=not show_progress) as bar:
        for number, batch in zip(todo, pixel_batches(source, preprocess, size, todo_images), strict=True):
            count = len(batch.indices)
            device = backbone.device
            targets_b = None if target is None else torch.full((count,), target, device=device)
            refs_bk = torch.tensor([refs] * count, device=device) if isinstance(refs, list) else refs
            result = compute_cams(backbone, batch.pixels_bchw, config.method, targets_b, refs_bk, config.gamma,
                                  config.n_refs, layer, chunk_size=size)
            if number == todo[0]:
                _warn_fewer_heads(config, result)
            batch_records = []
            for row, (index, image) in enumerate(zip(batch.indices, batch.images, strict=True)):
                image_hw = (image.height, image.width)
                map_hw = preprocess.unmap(result.maps_bhw[row], image_hw)
                _write_image_outputs(config.out, stems[index], image, map_hw)
                record = _image_record(config, result, row, source.records[index].source, stems[index], image_hw, class_names)
                if result.head_maps_bkhw is not None:
                    record |= _class_query_outputs(config, backbone, result, row, batch.pixels_bchw[row:row + 1].to(device),
                                                   stems[index], image, preprocess.unmap)
                batch_records.append(record)
            progress.save_json(number, {"indices": batches[number], "images": batch_records})
            records[number] = batch_records
            bar.update(count)
    summary = {
        "format": FORMAT, "version": 1, "software": {"traitlens": __version__},
        "config": config.to_dict(), "model": {"spec": backbone.spec, "weights_fingerprint": backbone.weights_fingerprint()},
        "layer": layer, "job": progress.job, "images": [record for saved in records for record in saved or []],
    }
    write_gallery(config.out, summary)
    atomic_write_json(config.out / SUMMARY, summary)
    progress.finish()
    return summary
