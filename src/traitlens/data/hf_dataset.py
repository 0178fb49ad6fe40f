"""A Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (a Dataset or a DatasetDict)."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import pyarrow.compute as pc
from PIL import Image

from traitlens.data.detect import DATASET_DICT_MARKER
from traitlens.data.images import UnreadableImageError, decode_image
from traitlens.data.source import ImageRecord, ImageSource, file_size
from traitlens.errors import DataError

LABEL_COLUMNS = ("label", "labels")
DEFAULT_SPLIT = "train"


class HFDatasetSource(ImageSource):
    """Rows of a saved dataset, in row order; sources are ``"<split>/<row index>"``.

    For a DatasetDict the split is ``"train"`` if present, else the first in sorted order; to use
    another split, open its subdirectory. The image column is the first ``Image`` feature; the
    label column the first ``ClassLabel`` feature (labels are its names, ``class_names`` its full
    vocabulary, sorted), else a column named ``label`` or ``labels`` (labels are ``str`` of the
    values). Images are decoded here, not by ``datasets``, so one corrupt row raises
    UnreadableImageError for that row only.
    """

    kind = "hf_dataset"

    def __init__(self, root: Path) -> None:
        split, dataset = _load_split(root)
        if len(dataset) == 0:
            raise DataError(f"dataset {root} (split {split}) has no rows; expected images")
        features = dataset.features
        image_column = next(
            (name for name, feature in features.items() if isinstance(feature, datasets.Image)),
            None,
        )
        if image_column is None:
            raise DataError(
                f"dataset {root} has no Image column; found columns "
                f"{', '.join(f'{name} ({type(feature).__name__})' for name, feature in features.items())}"
            )
        labels, class_names = _read_labels(dataset)
        records = [ImageRecord(f"{split}/{index}", label) for index, label in enumerate(labels)]
        super().__init__(root, records, class_names)
        # decode=False yields {"bytes", "path"} per row, which decode_image opens itself.
        self.images = dataset.select_columns([image_column]).cast_column(
            image_column, datasets.Image(decode=False)
        )
        self.image_column = image_column

    def load_image(self, index: int) -> Image.Image:
        """The image of row ``index``, fully decoded, RGB; raises UnreadableImageError."""
        source = self.records[index].source
        cell = self.images[index][self.image_column]
        if cell["bytes"] is not None:
            return decode_image(io.BytesIO(cell["bytes"]), source)
        if cell["path"] is not None:
            return decode_image(Path(cell["path"]), source)
        raise UnreadableImageError(f"cannot read image {source}: the row holds no image")

    def _content_sizes(self) -> list[list[int]]:
        # Blob lengths come from the Arrow offsets buffer, so no image bytes are read.
        cells = self.images.with_format("arrow")[self.image_column]
        blob_sizes = pc.binary_length(pc.struct_field(cells, "bytes")).to_pylist()
        paths = pc.struct_field(cells, "path").to_pylist()
        return [
            [size if size is not None else file_size(Path(path)) if path is not None else -1]
            for size, path in zip(blob_sizes, paths, strict=True)
        ]


def _load_split(root: Path) -> tuple[str, datasets.Dataset]:
    """The split name and dataset to read from a saved Dataset or DatasetDict."""
    try:
        loaded = datasets.load_from_disk(str(root))
    # datasets reads its JSON metadata without checking it: malformed files raise TypeError,
    # KeyError, AttributeError, IndexError, ... besides OSError and ValueError; all mean "damaged".
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot load saved dataset {root}: {reason}") from error
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise DataError(
                f"dataset {root} is a DatasetDict with no splits; expected at least one"
            )
        split = DEFAULT_SPLIT if DEFAULT_SPLIT in loaded else sorted(loaded)[0]
        return split, loaded[split]
    if loaded.split is not None:
        return str(loaded.split), loaded
    # A split saved inside a DatasetDict does not record its own name; its folder is named after it.
    if (root.parent / DATASET_DICT_MARKER).is_file():
        return root.name, loaded
    return DEFAULT_SPLIT, loaded


def _read_labels(dataset: datasets.Dataset) -> tuple[list[str | None], list[str] | None]:
    """Each row's label and the declared vocabulary (None unless a ClassLabel declares one)."""
    features = dataset.features
    for name, feature in features.items():
        if isinstance(feature, datasets.ClassLabel):
            indices = dataset.with_format("arrow")[name].to_pylist()
            # -1 is how datasets marks a row without a label.
            labels = [None if i is None or i < 0 else feature.int2str(i) for i in indices]
            return labels, sorted(feature.names)
    label_column = next((name for name in LABEL_COLUMNS if name in features), None)
    if label_column is None:
        return [None] * len(dataset), None
    values = dataset.with_format("arrow")[label_column].to_pylist()
    return [None if value is None else str(value) for value in values], None
