import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from traitlens.data.hf_dataset import HFDatasetSource
from traitlens.data.images import UnreadableImageError
from traitlens.data.source import ImageRecord
from traitlens.errors import DataError

from .builders import first_pixel, jpeg_bytes


def _png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _dataset(blobs: list[bytes], labels: list[int], names: list[str]) -> datasets.Dataset:
    rows = {"image": [{"bytes": blob, "path": None} for blob in blobs], "label": labels}
    dataset = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    return dataset.cast_column("label", datasets.ClassLabel(names=names))


@pytest.fixture(autouse=True)
def _quiet() -> None:
    datasets.disable_progress_bars()


def test_class_label_dataset_records_labels_and_images(tmp_path: Path) -> None:
    _dataset(
        [_png_bytes(10), _png_bytes(20), _png_bytes(30)], [1, 0, -1], ["zebra", "ant"]
    ).save_to_disk(tmp_path)

    source = HFDatasetSource(tmp_path)

    assert source.kind == "hf_dataset"
    assert source.records == [
        ImageRecord("train/0", "ant"),
        ImageRecord("train/1", "zebra"),
        ImageRecord("train/2", None),
    ]
    assert source.class_names == ["ant", "zebra"]
    assert [first_pixel(source.load_image(i))[0] for i in range(3)] == [10, 20, 30]


def test_corrupt_row_fails_alone(tmp_path: Path) -> None:
    truncated = jpeg_bytes(Image.new("RGB", (64, 64), (9, 9, 9)))
    blobs = [_png_bytes(5), truncated[: len(truncated) // 2], b"not an image"]
    _dataset(blobs, [0, 0, 0], ["a"]).save_to_disk(tmp_path)
    source = HFDatasetSource(tmp_path)

    for index in (1, 2):
        with pytest.raises(UnreadableImageError, match=rf"cannot read image train/{index}: "):
            source.load_image(index)
    assert source.load_image(0).mode == "RGB"


def test_dataset_dict_uses_train_split(tmp_path: Path) -> None:
    splits = datasets.DatasetDict(
        {
            "test": _dataset([_png_bytes(1)], [0], ["a", "b"]),
            "train": _dataset([_png_bytes(2), _png_bytes(3)], [1, 0], ["a", "b"]),
        }
    )
    splits.save_to_disk(tmp_path)

    source = HFDatasetSource(tmp_path)

    assert [record.source for record in source.records] == ["train/0", "train/1"]
    assert first_pixel(source.load_image(0))[0] == 2


def test_split_subfolder_of_a_dataset_dict_is_named_after_its_folder(tmp_path: Path) -> None:
    splits = datasets.DatasetDict(
        {
            "train": _dataset([_png_bytes(1)], [0], ["a"]),
            "test": _dataset([_png_bytes(2)], [0], ["a"]),
        }
    )
    splits.save_to_disk(tmp_path)

    source = HFDatasetSource(tmp_path / "test")

    assert [record.source for record in source.records] == ["test/0"]
    assert first_pixel(source.load_image(0))[0] == 2


def test_dataset_dict_without_train_uses_first_sorted_split(tmp_path: Path) -> None:
    splits = datasets.DatasetDict(
        {
            "validation": _dataset([_png_bytes(1)], [0], ["a"]),
            "test": _dataset([_png_bytes(2)], [0], ["a"]),
        }
    )
    splits.save_to_disk(tmp_path)

    source = HFDatasetSource(tmp_path)

    assert [record.source for record in source.records] == ["test/0"]
    assert first_pixel(source.load_image(0))[0] == 2


def test_plain_label_column_and_path_only_images(tmp_path: Path) -> None:
    # save_to_disk embeds local files, so a dataset whose rows hold only paths (as older
    # datasets versions wrote) is made by saving plain structs and declaring them an Image.
    Image.new("RGB", (2, 2), (77, 0, 0)).save(tmp_path / "x.png")
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"photo": struct, "label": datasets.Value("int64")})
    rows = {
        "photo": [{"bytes": None, "path": str(tmp_path / name)} for name in ["x.png", "gone.png"]],
        "label": [3, None],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "ds")
    info = json.loads((tmp_path / "ds" / "dataset_info.json").read_text())
    info["features"]["photo"] = {"_type": "Image"}
    (tmp_path / "ds" / "dataset_info.json").write_text(json.dumps(info))

    source = HFDatasetSource(tmp_path / "ds")

    assert [record.label for record in source.records] == ["3", None]
    assert source.class_names == ["3"]
    assert first_pixel(source.load_image(0)) == (77, 0, 0)
    with pytest.raises(UnreadableImageError, match="train/1"):
        source.load_image(1)
    before = source.fingerprint()
    Image.new("RGB", (2, 2), (77, 0, 0)).save(tmp_path / "gone.png")
    assert HFDatasetSource(tmp_path / "ds").fingerprint() != before


def test_missing_image_column_names_the_columns(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"text": ["a"], "label": [0]}).save_to_disk(tmp_path)

    with pytest.raises(DataError, match=r"no Image column; found columns text \(Value\)"):
        HFDatasetSource(tmp_path)


def test_fingerprint_tracks_labels_and_image_bytes_not_reload(tmp_path: Path) -> None:
    blobs = [_png_bytes(1), _png_bytes(2)]
    _dataset(blobs, [0, 1], ["a", "b"]).save_to_disk(tmp_path / "one")
    _dataset(blobs, [0, 1], ["a", "b"]).save_to_disk(tmp_path / "same")
    _dataset(blobs, [1, 1], ["a", "b"]).save_to_disk(tmp_path / "relabelled")
    bigger = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(bigger).save(buffer, format="PNG")
    _dataset([blobs[0], buffer.getvalue()], [0, 1], ["a", "b"]).save_to_disk(tmp_path / "new_image")

    prints = {
        name: HFDatasetSource(tmp_path / name).fingerprint()
        for name in ["one", "same", "relabelled", "new_image"]
    }

    assert prints["one"] == prints["same"]
    assert len({prints["one"], prints["relabelled"], prints["new_image"]}) == 3


@pytest.mark.parametrize(("file", "content"), [
    ("state.json", []),
    ("state.json", {"_data_files": [{}]}),
    ("dataset_info.json", {"features": "image"}),
    ("dataset_info.json", None),
])
def test_damaged_metadata_is_a_data_error(tmp_path: Path, file: str, content: object) -> None:
    _dataset([_png_bytes(10)], [0], ["ant"]).save_to_disk(tmp_path)
    (tmp_path / file).write_text(json.dumps(content))

    with pytest.raises(DataError, match="cannot load saved dataset"):
        HFDatasetSource(tmp_path)


def test_a_damaged_dataset_dict_is_a_data_error(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": _dataset([_png_bytes(10)], [0], ["ant"])}).save_to_disk(tmp_path)
    (tmp_path / "dataset_dict.json").write_text("[]")

    with pytest.raises(DataError, match="cannot load saved dataset"):
        HFDatasetSource(tmp_path)
