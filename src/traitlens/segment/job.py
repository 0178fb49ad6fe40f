"""``traitlens segment``: one label map per image of ``--data``, propagated from a few labelled
support images, written as a segmentation folder that every other command reads.

``OUT/images/<path>`` is a byte copy of each image (its class subfolder kept, so the images keep
their labels), ``OUT/annotations/<path>.png`` its 8-bit label map, ``OUT/names.txt`` the support's
label names, ``OUT/previews/`` the support and the least confident images with their labels
painted on, ``OUT/index.html`` a page of them, and ``OUT/segmentation.json``, written last, the job,
the model and every image's confidence. Images are segmented in groups (all together, or one group
per class with ``--match class``), each group a pseudo-video that starts from its support images;
the run resumes batch by batch (:mod:`traitlens.progress`), the backend's memory saved with each
finished batch, so a killed run ends with the same files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from traitlens.atomic import atomic_save_png, atomic_write_bytes, atomic_write_json
from traitlens.data import open_image_source
from traitlens.data.segmentation import SegmentationSource
from traitlens.data.source import FileImageSource
from traitlens.html_pages import page
from traitlens.output_folder import claim_output_folder
from traitlens.overlay import label_colour, label_overlay
from traitlens.progress import BatchProgress, fixed_batches
from traitlens.segment.backends import SegmentBackend, make_backend
from traitlens.segment.config import SegmentConfig, SegmentError
from traitlens.segment.support import Support, SupportImage, read_support
from traitlens.tables import write_text
from traitlens.version import __version__

FORMAT = "traitlens.segmentation"
RESULT = "segmentation.json"
N_PREVIEWS = 48
"""The least confident images shown on the page: the ones to check first."""


@dataclass(frozen=True)
class Group:
    label: str | None
    supports: tuple[SupportImage, ...]
    indices: list[int]


def _relative_paths(source: FileImageSource) -> list[PurePosixPath]:
    """Each image's path inside ``OUT/images`` (a segmentation folder's ``images/`` prefix dropped);
    two images whose label maps would share a file (``a.jpg`` and ``a.png``) are refused."""
    paths = []
    owners: dict[str, str] = {}
    for record in source.records:
        path = PurePosixPath(record.source)
        if isinstance(source, SegmentationSource):
            path = path.relative_to("images")
        if ".." in path.parts or path.is_absolute():
            raise SegmentError(f"image {record.source!r} has no path inside --out to be written to")
        annotation = path.with_suffix(".png").as_posix().casefold()  # a case-insensitive disk would merge them too
        if annotation in owners:
            raise SegmentError(f"images {owners[annotation]} and {record.source} would share one label map "
                               f"(annotations/{path.with_suffix('.png')}); rename one of them")
        owners[annotation] = record.source
        paths.append(path)
    return paths


def _record(relative: PurePosixPath, label: str | None, confidence: float, support: bool) -> dict[str, Any]:
    return {"source": f"images/{relative}", "annotation": f"annotations/{relative.with_suffix('.png')}", "class": label,
            "confidence": round(confidence, 6), "support": support}


def _groups(config: SegmentConfig, source: FileImageSource, support: Support) -> list[Group]:
    if config.match == "all":
        return [Group(None, support.images, list(range(len(source))))]
    if source.class_names is None or any(record.label is None for record in source.records):
        raise SegmentError(f"--match class needs --data with classes (a class folder), but {config.data} has none")
    if any(image.label is None for image in support.images):
        raise SegmentError("--match class takes its support from --support-data (labelled images in class folders); "
                           "a --support IMG has no class")
    missing = [label for label in source.class_names if not support.of_class(label)]
    if missing:
        raise SegmentError(f"--match class: no support image of class(es) {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}; --support-data must label one of each class of --data")
    return [Group(label, support.of_class(label), [index for index, record in enumerate(source.records) if record.label == label])
            for label in source.class_names]


def _support_digest(support: Support) -> str:
    digest = hashlib.sha256()
    for image in support.images:
        digest.update(f"{image.source}\n{image.label}\n".encode())
        digest.update(np.ascontiguousarray(np.asarray(image.image)).tobytes())
        digest.update(np.ascontiguousarray(image.labels_hw).tobytes())
    digest.update("\n".join(support.names).encode())
    return digest.hexdigest()


def _open_data(config: SegmentConfig) -> FileImageSource:
    source = open_image_source(config.data)
    if not isinstance(source, FileImageSource):
        raise SegmentError(f"segment copies each image next to its label map, so --data must be image files "
                           f"(a class, image or segmentation folder, a table or one image), not a {source.kind}")
    out = config.out.expanduser().resolve()
    if source.root.is_dir() and (out == source.root or source.root in out.parents):
        raise SegmentError(f"--out {config.out} is inside --data {config.data}; choose a folder outside the images")
    if out in source.root.parents:  # --overwrite would empty the images being segmented
        raise SegmentError(f"--data {config.data} is inside --out {config.out}; choose a folder outside the images")
    return source


def _write_image(out: Path, source: FileImageSource, index: int, relative: PurePosixPath, labels_hw: np.ndarray) -> None:
    atomic_write_bytes(out / "images" / relative, source.paths[index].read_bytes())
    atomic_save_png(out / "annotations" / relative.with_suffix(".png"), Image.fromarray(labels_hw, mode="L"))


def _saved_records(progress: BatchProgress, number: int, indices: list[int], relative: list[PurePosixPath],
                   label: str | None, supports_at: dict[int, SupportImage]) -> list[dict[str, Any]] | None:
    """The records of a finished batch, rebuilt from the images they belong to (only each
    confidence is read back, checked); None when the batch is unfinished."""
    saved = progress.load_json(number)
    if saved is None:
        return None
    confidences = saved.get("confidences")
    if not isinstance(confidences, list) or len(confidences) != len(indices) or not all(
            isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1 for value in confidences):
        raise progress.damaged(progress.path(number, ".json"), "not a confidence in [0, 1] for each of its images")
    return [_record(relative[index], label, float(value), index in supports_at) for index, value in zip(indices, confidences, strict=True)]


def _supports_among(source: FileImageSource, support: Support) -> dict[int, SupportImage]:
    """The images of ``source`` that are support images (the same file), by index."""
    by_path = {image.path: image for image in support.images if image.path is not None}
    resolved = [path.resolve() for path in source.paths]
    return {index: by_path[path] for index, path in enumerate(resolved) if path in by_path}


def _run_groups(config: SegmentConfig, backend: SegmentBackend, source: FileImageSource, relative: list[PurePosixPath],
                groups: list[Group], progress: BatchProgress, show_progress: bool,
                supports_at: dict[int, SupportImage]) -> list[dict[str, Any]]:
    # batches are numbered across the groups, group after group: the units the job resumes from
    numbered = [(group, [group.indices[position] for position in batch])
                for group in groups for batch in fixed_batches(len(group.indices), config.batch_size)]
    records = [_saved_records(progress, number, indices, relative, group.label, supports_at)
               for number, (group, indices) in enumerate(numbered)]
    done = sum(len(saved) for saved in records if saved is not None)
    with tqdm(total=len(source), initial=done, unit="img", desc=f"segment ({config.backend})", disable=not show_progress) as bar:
        first = 0
        for group in groups:
            numbers = range(first, first + len(fixed_batches(len(group.indices), config.batch_size)))
            first = numbers.stop
            todo = [number for number in numbers if records[number] is None]
            if not todo:
                continue
            backend.start(group.supports)
            if todo[0] > numbers.start:  # go on from the memory the last finished batch of this group left
                saved_state = progress.load_tensors(todo[0] - 1)
                if saved_state is None and config.memory > 0 and config.backend == "features":
                    raise progress.damaged(progress.path(todo[0] - 1, ".safetensors"), "the memory it carries is missing")
                backend.restore(saved_state or {})
            for number in range(todo[0], numbers.stop):
                indices = numbered[number][1]
                results = backend.segment([source.load_image(index) for index in indices])
                batch_records = []
                for index, result in zip(indices, results, strict=True):
                    # a support image among the images keeps its own mask: it is the truth, not a guess
                    labels_hw, confidence = (supports_at[index].labels_hw.astype(np.uint8), 1.0) if index in supports_at \
                        else (result.labels_hw, result.confidence)
                    _write_image(config.out, source, index, relative[index], labels_hw)
                    batch_records.append(_record(relative[index], group.label, confidence, index in supports_at))
                state = backend.state()
                if state:
                    progress.save_tensors(number, state)
                progress.save_json(number, {"confidences": [record["confidence"] for record in batch_records]})
                records[number] = batch_records
                bar.update(len(indices))
    return [record for saved in records for record in saved or []]


def _write_previews(out: Path, support: Support, records: list[dict[str, Any]]) -> None:
    """Previews of the support and of the least confident images, and the page that shows them."""
    figures = []
    for number, supporting in enumerate(support.images):
        name = f"previews/support/{number:03d}.png"
        atomic_save_png(out / name, label_overlay(supporting.image, supporting.labels_hw))
        figures.append(("support", name, supporting.source))
    for record in sorted((item for item in records if not item["support"]), key=lambda item: item["confidence"])[:N_PREVIEWS]:
        with Image.open(out / record["source"]) as image, Image.open(out / record["annotation"]) as labels:
            drawn = label_overlay(image.convert("RGB"), np.asarray(labels))
        name = f"previews/images/{PurePosixPath(record['source']).relative_to('images').with_suffix('.png')}"
        atomic_save_png(out / name, drawn)
        figures.append((f"confidence {record['confidence']:.3f}", name, record["source"]))
    legend = " ".join(f'<span style="background:rgb{label_colour(label)};padding:0 0.5em">&nbsp;</span> {escape(name)}'
                      for label, name in enumerate(support.names) if label > 0)
    shown = "".join(f'<figure><img src="{escape(name)}" width="160" alt="{escape(source)}"><figcaption>{escape(caption)}<br>'
                    f"{escape(source)}</figcaption></figure>" for caption, name, source in figures)
    body = (f"<h1>traitlens segment</h1><p class=\"meta\">{len(records)} images; labels: {legend}</p>"
            f"<p class=\"note\">The support images first, then the {min(N_PREVIEWS, len(records))} least confident "
            f"segmentations, least first: check these before trusting the rest.</p><div class=\"images\">{shown}</div>")
    write_text(out / "index.html", page("traitlens segment", body))


def segment(config: SegmentConfig, backend: SegmentBackend | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Segment every image of ``config.data`` and return the result written to ``segmentation.json``."""
    support = read_support(list(config.support_images), list(config.support_masks), config.support_data,
                           config.n_support, config.names)
    source = _open_data(config)
    groups = _groups(config, source, support)
    relative = _relative_paths(source)
    if backend is None:
        backend = make_backend(config, len(support.names))
    # claimed only once the request is known to be good: --overwrite must not empty a folder for a bad one
    claim_output_folder(config.out, "segment", overwrite=config.overwrite, resumable=True, error=SegmentError)
    job = config.to_dict()
    for key in ("out", "overwrite", "device"):
        del job[key]
    job.update(backend.identity(), support_sha256=_support_digest(support), dataset_fingerprint=source.fingerprint(),
               n_images=len(source), traitlens_version=__version__)
    progress = BatchProgress(config.out, "segmentation", job, SegmentError)
    finished = progress.finished(config.out / RESULT, FORMAT)
    if finished is not None:
        return finished
    write_text(config.out / "names.txt", "\n".join(support.names) + "\n")
    records = _run_groups(config, backend, source, relative, groups, progress, show_progress, _supports_among(source, support))
    _write_previews(config.out, support, records)
    confidences = [record["confidence"] for record in records]
    result = {"format": FORMAT, "version": 1, "software": {"traitlens": __version__}, "config": config.to_dict(),
              "job": job, "names": list(support.names), "names_source": support.names_source,
              "support": [{"source": image.source, "path": None if image.path is None else str(image.path), "class": image.label}
                          for image in support.images],
              "mean_confidence": float(np.mean(confidences)), "images": records}
    atomic_write_json(config.out / RESULT, result)
    progress.finish()
    return result
