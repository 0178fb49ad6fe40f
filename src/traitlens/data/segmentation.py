"""A segmentation folder: ``images/`` plus ``annotations/`` label maps matched by file name."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from traitlens.data.images import (
    UnreadableImageError,
    decode_label_map,
    describe_extensions,
    find_images,
)
from traitlens.data.source import FileImageSource, ImageRecord, file_size
from traitlens.errors import DataError

NAMES_FILES = ("names.txt", "classes.txt")


class SegmentationSource(FileImageSource):
    """Images under ``root/images/`` with label maps under ``root/annotations/``.

    An image's mask is the annotation at the same relative path with any image extension
    (``images/train/a.jpg`` -> ``annotations/train/a.png``); failing that, the only annotation
    anywhere with the same stem (``annotations/trimaps/a.png``, the Oxford-IIIT Pets layout).
    Images without one have no mask. Mask pixel values are class indices; ``mask_names`` comes
    from ``names.txt`` or ``classes.txt`` in ``root`` (line i names label i), else is None.
    When every image sits in a subfolder of ``images/``, the top-level subfolder is its image label,
    as in a class folder (``images/<class>/x.png``).
    """

    kind = "segmentation"
    has_masks = True

    def __init__(self, root: Path) -> None:
        image_paths = find_images(root / "images", recursive=True)
        if not image_paths:
            raise DataError(
                f"no images found in {root / 'images'} (looked for {describe_extensions()})"
            )
        relative = [path.relative_to(root / "images") for path in image_paths]
        # the class-folder convention inside images/: when every image sits in a subfolder, the
        # top-level subfolder is its image label (a split folder such as train/ becomes one too)
        in_subfolders = all(len(part.parts) > 1 for part in relative)
        records = [ImageRecord(path.relative_to(root).as_posix(), part.parts[0] if in_subfolders else None)
                   for path, part in zip(image_paths, relative, strict=True)]
        super().__init__(root, records, image_paths)
        self.mask_paths = _match_masks(root, image_paths)
        self.mask_names = read_names(root)

    def load_mask(self, index: int) -> np.ndarray | None:
        """The (h, w) int64 label map of the image at ``index``, or None when it has no mask.

        Raises UnreadableImageError when the mask cannot be decoded or its size differs from the
        image's (read from the image header only), since its labels would not line up.
        """
        mask_path = self.mask_paths[index]
        if mask_path is None:
            return None
        mask_source = mask_path.relative_to(self.root).as_posix()
        labels_hw = decode_label_map(mask_path, mask_source)
        image_hw = _image_size_hw(self.paths[index])
        if image_hw is not None and image_hw != labels_hw.shape:
            raise UnreadableImageError(
                f"cannot use mask {mask_source}: it is {labels_hw.shape[0]}x{labels_hw.shape[1]} "
                f"(h x w) but image {self.records[index].source} is {image_hw[0]}x{image_hw[1]}"
            )
        return labels_hw

    def _content_sizes(self) -> list[list[int]]:
        return [
            [file_size(path), -1 if mask is None else file_size(mask)]
            for path, mask in zip(self.paths, self.mask_paths, strict=True)
        ]


def _match_masks(root: Path, image_paths: list[Path]) -> list[Path | None]:
    """For each image, its annotation file or None; DataError when the match is ambiguous."""
    by_relative_stem: defaultdict[PurePosixPath, list[Path]] = defaultdict(list)
    by_stem: defaultdict[str, list[Path]] = defaultdict(list)
    for mask_path in find_images(root / "annotations", recursive=True):
        by_relative_stem[_stem_key(mask_path, root / "annotations")].append(mask_path)
        by_stem[mask_path.stem].append(mask_path)
    masks: list[Path | None] = []
    for image_path in image_paths:
        candidates = by_relative_stem.get(_stem_key(image_path, root / "images")) or by_stem.get(
            image_path.stem, []
        )
        if len(candidates) > 1:
            raise DataError(
                f"image {image_path.relative_to(root).as_posix()} matches several annotations "
                f"({', '.join(path.relative_to(root).as_posix() for path in candidates)}); "
                "expected one mask per image"
            )
        masks.append(candidates[0] if candidates else None)
    return masks


def _stem_key(path: Path, folder: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(folder).as_posix()).with_suffix("")


def read_names(root: Path, file_names: tuple[str, ...] = NAMES_FILES) -> list[str] | None:
    """Label names from the first of ``file_names`` in ``root`` (line i names label i), or None."""
    for name in file_names:
        names_path = root / name
        if names_path.is_file():
            try:
                lines = names_path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as error:
                raise DataError(f"cannot read label names {names_path}: not UTF-8 text ({error.reason})") from error
            # A trailing blank line is an editor artefact, not a label; inner ones keep numbering.
            while lines and not lines[-1].strip():
                lines.pop()
            return [line.strip() for line in lines]
    return None


def _image_size_hw(path: Path) -> tuple[int, int] | None:
    """(h, w) from the image header; None when unreadable, which load_image reports instead."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # any failure here is reported by load_image, with its reason
        return None
