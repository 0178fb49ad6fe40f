"""Opening an image source: detect its kind from what is at the given path."""

from __future__ import annotations

from pathlib import Path

from traitlens.data.folders import ImageFileSource, open_folder
from traitlens.data.images import IMAGE_EXTENSIONS
from traitlens.data.segmentation import SegmentationSource
from traitlens.data.source import ImageSource
from traitlens.data.table import TABLE_SUFFIXES, TableSource
from traitlens.errors import DataError

# Written by Dataset.save_to_disk (both files) and DatasetDict.save_to_disk respectively.
DATASET_MARKERS = ("dataset_info.json", "state.json")
DATASET_DICT_MARKER = "dataset_dict.json"


def open_image_source(path: str | Path) -> ImageSource:
    """Open the images at ``path``, detecting their layout.

    In order: a ``.csv``/``.parquet`` file is a table; an image file is a one-image source; a
    directory saved by ``datasets``' ``save_to_disk`` is an hf_dataset; one with ``images/`` and
    ``annotations/`` subfolders is a segmentation folder; one whose subfolders hold images is a
    class folder; one with images directly inside is an image folder. Raises DataError when
    nothing usable is there.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataError(
            f"image source {path} does not exist; expected a folder of images, an image file, a .csv "
            "or .parquet table, or a dataset saved with datasets' save_to_disk"
        )
    if root.is_file():
        if root.suffix.lower() in TABLE_SUFFIXES:
            return TableSource(root)
        if root.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageFileSource(root)
        raise DataError(
            f"cannot open {path} as an image source: expected a folder, an image file or a "
            f"{' or '.join(TABLE_SUFFIXES)} table, found a '{root.suffix or 'no extension'}' file"
        )
    if _is_saved_dataset(root):
        # Imported here because importing datasets takes about a second.
        from traitlens.data.hf_dataset import HFDatasetSource

        return HFDatasetSource(root)
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return SegmentationSource(root)
    return open_folder(root)


def _is_saved_dataset(root: Path) -> bool:
    return (root / DATASET_DICT_MARKER).is_file() or all(
        (root / marker).is_file() for marker in DATASET_MARKERS
    )
