"""Writing a specimens benchmark folder: images, label maps and the ground truth that describes them.

Layout of ``OUT``::

    images/<species>/<stem>.png       RGB, size x size; OUT/images alone is a class folder
    annotations/<species>/<stem>.png  8-bit label map of the image; with images/ and names.txt,
                                      OUT is a segmentation folder
    masks/<species>/<stem>.npy        (traits, size, size) bool: one mask per trait, in the order of
                                      traits.json, overlaps allowed (see docs/formats.md)
    names.txt                         line j names label j: background, body, then the traits
    twins/images/<species>/<stem>.png with ``--twins``: image <stem>'s counterfactual twin, the same
    twins/annotations/..., twins/names.txt  organism and scene as its look-alike species <species>
    twins/masks/...                   (a segmentation folder of its own)
    traits.json                       catalog, look-alike pairs and every image's species, traits
                                      and occluded fraction; written last, it marks OUT complete
    .generate.json                    the job (n, seed, size, catalog), written first

Image i (stem ``f"{i:08d}"``) shows species ``SPECIES[i % 16]`` drawn from
``np.random.default_rng([seed, i])``, so it depends on (seed, i, size) only: a larger n adds images
without changing the first ones, species are balanced to within one image, and a killed run resumes
by skipping the files already written (each is written atomically, so none is half there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

from traitlens.atomic import (
    atomic_save_npy,
    atomic_save_png,
    atomic_write_bytes,
    atomic_write_json,
    remove_temp_files,
)
from traitlens.checks import check_float, check_int
from traitlens.errors import DataError
from traitlens.output_folder import claim_output_folder
from traitlens.specimens.catalog import SPECIES, Species, catalog_dict, label_names, lookalike_of
from traitlens.specimens.render import Specimen, render_specimen

FORMAT = "traitlens.specimens"
VERSION = 1
JOB_FILE = ".generate.json"
COMMAND = "specimens generate"
TRAITS_FILE = "traits.json"
NAMES_FILE = "names.txt"
TWINS_DIR = "twins"
MIN_SIZE, MAX_SIZE = 32, 1024
MAX_IMAGES = 10**8
"""Stems have eight digits, so file names sort in image order."""
_CHUNK = 64
"""Images a worker draws per task: large enough to amortize the hand-off, small for the progress bar."""


@dataclass(frozen=True)
class GenerateConfig:
    out: Path
    """The benchmark folder: new, empty, or an unfinished run of the same job to resume."""
    n: int
    """Number of images."""
    seed: int
    """Any non-negative integer; image i is drawn from ``np.random.default_rng([seed, i])``."""
    size: int = 96
    """Image side in pixels."""
    workers: int = 2
    """Threads drawing and writing images (PNG encoding, file syncs and most drawing release the
    GIL; on 2 cores 2 threads beat 1 by ~30% and 4 by ~15%). Does not change the output."""
    overwrite: bool = False
    """Start ``out`` again from scratch instead of resuming or keeping its benchmark."""
    twins: bool = False
    """Also draw each image's counterfactual twin: its look-alike species from the same random
    state, both framed twin-safe (:func:`render_specimen`), so the two differ only inside the
    footprint of the trait that separates them. The images are then framed slightly differently
    from a benchmark of the same seed without twins."""
    saturation: float = 1.0
    """Colour saturation of the photographs: 1 as drawn, 0 grayscale (Pillow's ``ImageEnhance.Color``
    blends each image with its luminance). Below 1 it is a shifted domain, for adapting a model
    trained on the colour ones (``traitlens finetune``)."""

    def __post_init__(self) -> None:
        check_int(self.n, "--n-images", DataError)
        check_int(self.seed, "--seed", DataError, minimum=0)
        check_int(self.size, "--size", DataError)
        check_int(self.workers, "--workers", DataError)
        if self.n > MAX_IMAGES:
            raise DataError(f"number of images must be between 1 and {MAX_IMAGES}, got {self.n}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise DataError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {self.size}")
        check_float(self.saturation, "--saturation", DataError)
        if self.saturation > 1:
            raise DataError(f"--saturation must be between 0 (grayscale) and 1 (as drawn), got {self.saturation}")

    def job(self) -> dict[str, Any]:
        """What fixes the output: a run resumes only into a folder started with the same job."""
        job = {"format": f"{FORMAT}.job", "version": VERSION, "n": self.n, "seed": self.seed,
               "size": self.size, "catalog": catalog_dict()}
        # only when asked, so a folder generated before twins existed resumes as the same job
        return {**job, **({"twins": True} if self.twins else {}), **({"saturation": self.saturation} if self.saturation != 1 else {})}


def image_species(index: int) -> Species:
    return SPECIES[index % len(SPECIES)]


def image_source(index: int) -> str:
    """Where image ``index`` lies, relative to the benchmark folder."""
    return f"images/{image_species(index).name}/{index:08d}.png"


def mask_source(image: str) -> str:
    """Where the trait masks of an image (``images/...`` or ``twins/images/...``) lie."""
    head, _, tail = image.rpartition("images/")
    return f"{head}masks/{tail.removesuffix('.png')}.npy"


def twin_source(index: int) -> str:
    """Where image ``index``'s twin lies, relative to the benchmark folder."""
    return f"{TWINS_DIR}/images/{lookalike_of(image_species(index))[0].name}/{index:08d}.png"


def generate(config: GenerateConfig, show_progress: bool = True) -> Path:
    """Write (or finish writing) the benchmark ``config`` describes; returns its folder.

    Raises DataError when ``config.out`` holds something other than this job's benchmark.
    """
    out = config.out
    _claim(out, config.job(), config.overwrite)
    if (out / TRAITS_FILE).is_file():
        return out
    remove_temp_files(out)
    _write_names(out / NAMES_FILE)
    if config.twins:
        _write_names(out / TWINS_DIR / NAMES_FILE)
    with tqdm(total=config.n, unit="img", desc="specimens", disable=not show_progress) as progress:
        fractions: list[float] = []
        for chunk_fractions in _draw_all(config):
            fractions.extend(chunk_fractions)
            progress.update(len(chunk_fractions))
    images = [{"source": image_source(index), "species": image_species(index).name,
               "traits": image_species(index).trait_values(), "occluded_fraction": round(fraction, 6),
               "masks": mask_source(image_source(index)),
               **({"twin": twin_source(index), "twin_masks": mask_source(twin_source(index))} if config.twins else {})}
              for index, fraction in enumerate(fractions)]
    atomic_write_json(out / TRAITS_FILE, {"format": FORMAT, "version": VERSION, "seed": config.seed,
                                          "size": config.size, "n": config.n, **catalog_dict(),
                                          "images": images})
    return out


def _claim(out: Path, job: dict[str, Any], overwrite: bool) -> None:
    """Start ``out`` for ``job``, or check that it was started for the same job."""
    job_path = out / JOB_FILE
    resuming = claim_output_folder(out, COMMAND, overwrite=overwrite, resumable=True, own_files=(JOB_FILE,), error=DataError)
    if resuming and job_path.is_file():
        try:
            saved = json.loads(job_path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"cannot resume specimens in {out}: {JOB_FILE} is unreadable ({error})") from error
        if saved != job:
            raise DataError(f"{out} holds specimens generated with {_difference(saved, job)}; "
                            "use another folder, the same settings, or --overwrite to start again")
        return
    atomic_write_json(job_path, job)


def _difference(saved: Any, job: dict[str, Any]) -> str:
    if not isinstance(saved, dict):
        return "a damaged job file"
    changed = [key for key in job if saved.get(key) != job[key]]
    return ", ".join(
        "another catalog or format (another traitlens version)" if key in ("catalog", "format", "version")
        else f"{key}={saved.get(key)} (this run: {job[key]})"
        for key in changed
    )


def _draw_all(config: GenerateConfig) -> Iterator[list[float]]:
    """Draw and write every image, yielding each chunk's occluded fractions in image order."""
    chunks = [range(start, min(start + _CHUNK, config.n)) for start in range(0, config.n, _CHUNK)]
    with ThreadPoolExecutor(min(config.workers, len(chunks))) as pool:
        yield from pool.map(_draw_chunk, repeat(config), chunks)


def _draw_chunk(config: GenerateConfig, indices: range) -> list[float]:
    """Draw images ``indices``, write those not on disk yet, and return their occluded fractions.

    Images already written are drawn again all the same: drawing is what yields their fraction.
    """
    fractions = []
    for index in indices:
        specimen = render_specimen(image_species(index), config.size, np.random.default_rng([config.seed, index]),
                                   twin_safe=config.twins)
        _write_specimen(config.out, image_source(index), specimen, config.saturation)
        if config.twins:
            twin = render_specimen(lookalike_of(image_species(index))[0], config.size,
                                   np.random.default_rng([config.seed, index]), twin_safe=True)
            _write_specimen(config.out / TWINS_DIR, twin_source(index).removeprefix(f"{TWINS_DIR}/"), twin, config.saturation)
        fractions.append(specimen.occluded_fraction)
    return fractions


def _write_specimen(root: Path, source: str, specimen: Specimen, saturation: float = 1.0) -> None:
    """The image at ``root/source`` (``images/...``), its label map under ``root/annotations`` and
    its trait masks under ``root/masks``, each unless a finished run already wrote it."""
    image = Image.fromarray(specimen.image_hw3)
    for path, picture in ((root / source, image if saturation == 1 else ImageEnhance.Color(image).enhance(saturation)),
                          (root / "annotations" / source.removeprefix("images/"), Image.fromarray(specimen.labels_hw))):
        if not path.is_file():
            atomic_save_png(path, picture)
    masks = root / mask_source(source)
    if not masks.is_file():
        atomic_save_npy(masks, specimen.footprints_thw)


def _write_names(path: Path) -> None:
    atomic_write_bytes(path, "".join(f"{name}\n" for name in label_names()).encode())


