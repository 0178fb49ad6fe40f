"""The labelled support: images with label maps (line i of ``names.txt`` names label i), given one
by one (``--support IMG --support-mask MASK``) or as a segmentation folder (``--support-data DIR``,
its first ``--n-support`` annotated images of each class). Everything is checked here, before the
output folder is claimed: a mask of another size than its image, labels without a name, no labels
at all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from traitlens.data import open_image_source
from traitlens.data.images import UnreadableImageError, decode_image, decode_label_map
from traitlens.data.segmentation import NAMES_FILES, SegmentationSource, read_names
from traitlens.errors import DataError

MAX_LABELS = 256
"""Label maps are written as 8-bit PNGs."""


@dataclass(frozen=True)
class SupportImage:
    source: str
    image: Image.Image
    labels_hw: np.ndarray
    label: str | None
    """Its class (a support folder's subfolder), for ``--match class``."""
    path: Path | None = None
    """The image file, resolved: a support image among the images to segment keeps its own mask."""


@dataclass(frozen=True)
class Support:
    images: tuple[SupportImage, ...]
    names: tuple[str, ...]
    names_source: str

    @property
    def classes(self) -> set[str]:
        return {image.label for image in self.images if image.label is not None}

    def of_class(self, label: str | None) -> tuple[SupportImage, ...]:
        """The support images of one class; all of them for ``None``."""
        return self.images if label is None else tuple(image for image in self.images if image.label == label)


def _checked_labels(labels_hw: np.ndarray, image: Image.Image, where: str) -> np.ndarray:
    if labels_hw.shape != (image.height, image.width):
        raise DataError(f"support mask {where} is {labels_hw.shape[0]}x{labels_hw.shape[1]} (h x w) but its image is "
                        f"{image.height}x{image.width}; a mask must have its image's size")
    if labels_hw.min() < 0:
        raise DataError(f"support mask {where} has negative labels")
    return labels_hw


def _names_near(mask: Path) -> Path | None:
    """The names file beside the mask, or at the root of the segmentation folder it is in (the
    folder that holds its ``annotations/``); no further up, where an unrelated file could be."""
    folders = [mask.parent]
    resolved = mask.resolve()
    if "annotations" in resolved.parent.parts:
        parts = resolved.parent.parts
        folders.append(Path(*parts[:len(parts) - parts[::-1].index("annotations") - 1]))
    for folder in folders:
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _single_channel(path: Path) -> None:
    """Refuse a colour-coded mask: label ids are one value per pixel, and reading one channel of a
    colour mask would turn a green or blue label into background without a word."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("RGB", "RGBA"):
                return
            rgb = np.asarray(mask.convert("RGB"))
    except Exception:  # unreadable: decode_label_map says why
        return
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
        raise DataError(f"support mask {path} is a colour image; expected label ids, one value per pixel "
                        "(a single-channel or palette PNG)")


def _read_names_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"label names {path} do not exist; expected a text file whose line i names label i")
    names = read_names(path.parent, (path.name,))
    if not names:
        raise DataError(f"label names {path} are empty; expected a text file whose line i names label i")
    return names


def _pairs(images: list[Path], masks: list[Path]) -> list[SupportImage]:
    if len(images) != len(masks):
        raise DataError(f"{len(images)} --support image(s) but {len(masks)} --support-mask(s); give one mask after each image")
    pairs = []
    for image_path, mask_path in zip(images, masks, strict=True):
        for path, what in ((image_path, "support image"), (mask_path, "support mask")):
            if not path.is_file():
                raise DataError(f"{what} {path} does not exist")
        _single_channel(mask_path)
        try:
            image = decode_image(image_path, str(image_path))
            labels_hw = decode_label_map(mask_path, str(mask_path))
        except UnreadableImageError as error:
            raise DataError(str(error)) from error
        pairs.append(SupportImage(str(image_path), image, _checked_labels(labels_hw, image, str(mask_path)), None,
                                  image_path.resolve()))
    return pairs


def _from_folder(folder: Path, n_per_class: int) -> tuple[list[SupportImage], list[str] | None]:
    source = open_image_source(folder)
    if not isinstance(source, SegmentationSource):
        raise DataError(f"--support-data {folder} is not a segmentation folder (images/ and annotations/ with label maps)")
    taken: dict[str | None, int] = {}
    supports = []
    for index, record in enumerate(source.records):
        mask_path = source.mask_paths[index]
        if taken.get(record.label, 0) >= n_per_class or mask_path is None:
            continue
        _single_channel(mask_path)
        try:
            image = source.load_image(index)
            labels_hw = source.load_mask(index)
        except UnreadableImageError as error:
            raise DataError(str(error)) from error
        assert labels_hw is not None
        supports.append(SupportImage(record.source, image, _checked_labels(labels_hw, image, record.source), record.label,
                                     source.paths[index].resolve()))
        taken[record.label] = taken.get(record.label, 0) + 1
    if not supports:
        raise DataError(f"--support-data {folder} has no annotated image")
    return supports, source.mask_names


def read_support(images: list[Path], masks: list[Path], folder: Path | None, n_per_class: int,
                 names_file: Path | None) -> Support:
    """The support images and label names, checked; DataError in one line otherwise."""
    supports = _pairs(images, masks)
    folder_names = None
    if folder is not None:
        from_folder, folder_names = _from_folder(folder, n_per_class)
        supports += from_folder
    if not supports:
        raise DataError("no support: give --support IMG --support-mask MASK (repeatable) or --support-data DIR")
    if names_file is not None:
        names, names_source = _read_names_file(names_file), str(names_file)
    elif folder_names is not None and folder is not None:
        names, names_source = folder_names, str(folder)
    else:
        found = _names_near(masks[0]) if masks else None
        if found is None:
            raise DataError("the support's label names were not found (no names.txt beside the mask or above it); "
                            "pass --names FILE, whose line i names label i")
        names, names_source = _read_names_file(found), str(found)
    if len(names) > MAX_LABELS:
        raise DataError(f"{names_source} names {len(names)} labels; label maps hold at most {MAX_LABELS}")
    for support in supports:
        highest = int(support.labels_hw.max())
        if highest >= len(names):
            missing = sorted(set(np.unique(support.labels_hw).tolist()) - set(range(len(names))))
            raise DataError(f"support mask of {support.source} has label(s) {', '.join(map(str, missing[:5]))} that "
                            f"{names_source} does not name (it names labels 0 to {len(names) - 1})")
    if all(int(support.labels_hw.max()) == 0 for support in supports):
        raise DataError("every support mask is background (label 0) only; there is nothing to propagate")
    return Support(tuple(supports), tuple(names), names_source)
