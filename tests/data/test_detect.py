import csv
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest

from traitlens.data import UnreadableImageError, open_image_source
from traitlens.errors import DataError

from .builders import write_image, write_label_map


def _class_folder(root: Path) -> Path:
    write_image(root / "cat" / "a.png")
    return root


def _image_folder(root: Path) -> Path:
    write_image(root / "a.png")
    return root


def _csv_table(root: Path) -> Path:
    write_image(root / "a.png")
    with (root / "list.CSV").open("w", newline="") as file:
        csv.writer(file).writerows([["path"], ["a.png"]])
    return root / "list.CSV"


def _segmentation(root: Path) -> Path:
    write_image(root / "images" / "a.png")
    write_label_map(root / "annotations" / "a.png", np.zeros((3, 4), dtype=np.int64))
    return root


def _hf_dataset(root: Path) -> Path:
    datasets.disable_progress_bars()
    rows = {"image": [str(write_image(root / "files" / "a.png"))]}
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).save_to_disk(
        root / "ds"
    )
    return root / "ds"


def _hf_dataset_dict(root: Path) -> Path:
    datasets.disable_progress_bars()
    rows = {"image": [str(write_image(root / "files" / "a.png"))]}
    split = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"validation": split}).save_to_disk(root / "ds")
    return root / "ds"


@pytest.mark.parametrize(
    ("build", "kind", "first_source"),
    [
        (_class_folder, "class_folder", "cat/a.png"),
        (_image_folder, "image_folder", "a.png"),
        (_csv_table, "table", "a.png"),
        (_segmentation, "segmentation", "images/a.png"),
        (_hf_dataset, "hf_dataset", "train/0"),
        (_hf_dataset_dict, "hf_dataset", "validation/0"),
    ],
)
def test_each_kind_is_detected(
    tmp_path: Path, build: Callable[[Path], Path], kind: str, first_source: str
) -> None:
    path = build(tmp_path)

    source = open_image_source(str(path))

    assert source.kind == kind
    assert source.root == path.resolve()
    assert source.records[0].source == first_source
    assert source.load_image(0).size == (4, 3)


def test_parquet_is_detected(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "a.png")
    pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "t.parquet")

    assert open_image_source(tmp_path / "t.parquet").kind == "table"


@pytest.mark.parametrize("name", ["one.png", "ONE.JPG", ".hidden.webp"])
def test_one_image_file_is_a_one_image_source(tmp_path: Path, name: str) -> None:
    path = write_image(tmp_path / name)

    source = open_image_source(path)

    assert source.kind == "image_file" and len(source) == 1
    assert (source.records[0].source, source.records[0].label, source.class_names) == (name, None, None)
    assert source.load_image(0).size == (4, 3)


def test_an_unreadable_image_file_fails_when_read(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")

    source = open_image_source(tmp_path / "broken.png")

    with pytest.raises(UnreadableImageError, match=r"broken\.png"):
        source.load_image(0)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image source .*nowhere does not exist; expected"):
        open_image_source(tmp_path / "nowhere")


def test_unknown_file_type_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")

    with pytest.raises(
        DataError, match=r"expected a folder, an image file or a \.csv or \.parquet table, found a '\.json' file"
    ):
        open_image_source(tmp_path / "data.json")


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no images found in .*\(looked for \.bmp, .*\.jpg"):
        open_image_source(tmp_path)
