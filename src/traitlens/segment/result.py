"""Typed reading of a ``traitlens segment`` folder's ``segmentation.json``: every field a reader
uses is checked, and every path it names stays inside the folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from traitlens.json_config import read_json_config
from traitlens.segment.config import SegmentError
from traitlens.segment.job import FORMAT, RESULT


@dataclass(frozen=True)
class SegmentedImage:
    source: str
    """``images/<path>``, relative to the folder."""
    annotation: str
    confidence: float
    support: bool
    """A support image among the images: its mask is the one it was labelled with."""


@dataclass(frozen=True)
class SegmentationResult:
    root: Path
    names: tuple[str, ...]
    images: tuple[SegmentedImage, ...]
    grid_hw: tuple[int, int] | None
    """The model's patch grid (features backend), for sizes in patches."""


def _inside(root: Path, value: Any, prefix: str, where: str) -> str:
    if not isinstance(value, str):
        raise SegmentError(f"{root / RESULT}: {where} must be a path")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != prefix or len(path.parts) < 2:
        raise SegmentError(f"{root / RESULT}: {where} {value!r} is not a path under {prefix}/ inside the folder")
    return value


def read_segmentation(root: Path) -> SegmentationResult:
    """A finished segmentation folder; one SegmentError line for anything else."""
    data = read_json_config(root / RESULT, FORMAT, "segmentation", SegmentError,
                            f"{root} holds no finished traitlens segmentation ({RESULT} is missing)", version=1)
    names = data.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise SegmentError(f"{root / RESULT}: names must be a list of label names")
    records = data.get("images")
    if not isinstance(records, list) or not records:
        raise SegmentError(f"{root / RESULT}: images must be a non-empty list")
    images = []
    for number, record in enumerate(records):
        where = f"images[{number}]"
        if not isinstance(record, dict):
            raise SegmentError(f"{root / RESULT}: {where} must be an object")
        confidence = record.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
            raise SegmentError(f"{root / RESULT}: {where}.confidence must be a number in [0, 1]")
        if not isinstance(record.get("support"), bool):
            raise SegmentError(f"{root / RESULT}: {where}.support must be true or false")
        images.append(SegmentedImage(_inside(root, record.get("source"), "images", f"{where}.source"),
                                     _inside(root, record.get("annotation"), "annotations", f"{where}.annotation"),
                                     float(confidence), record["support"]))
    job = data.get("job")
    grid = job.get("grid_hw") if isinstance(job, dict) else None
    grid_hw = None
    if grid is not None:
        if not isinstance(grid, list) or len(grid) != 2 or not all(type(side) is int and side >= 1 for side in grid):
            raise SegmentError(f"{root / RESULT}: job.grid_hw must be two positive integers")
        grid_hw = (grid[0], grid[1])
    return SegmentationResult(root, tuple(names), tuple(images), grid_hw)
