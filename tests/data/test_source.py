from pathlib import Path

import pytest
from PIL import Image

from traitlens.data.source import FileImageSource, ImageRecord, file_size

from .builders import first_pixel, write_image


class _Files(FileImageSource):
    kind = "test_files"


def _source(root: Path, labels: dict[str, str | None]) -> _Files:
    records = [ImageRecord(name, label) for name, label in labels.items()]
    return _Files(root, records, [root / name for name in labels])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_image(tmp_path / "a.png", value=10)
    write_image(tmp_path / "b.png", value=20)
    return tmp_path


def test_class_names_are_the_sorted_distinct_labels(root: Path) -> None:
    source = _source(root, {"a.png": "zebra", "b.png": "ant", "c.png": "zebra", "d.png": None})

    assert source.class_names == ["ant", "zebra"]
    assert len(source) == 4


def test_class_names_are_none_without_labels(root: Path) -> None:
    assert _source(root, {"a.png": None}).class_names is None


def test_fingerprint_is_stable_for_an_unchanged_source(root: Path) -> None:
    labels: dict[str, str | None] = {"a.png": "x", "b.png": "y"}

    assert _source(root, labels).fingerprint() == _source(root, labels).fingerprint()


def test_fingerprint_changes_with_records_labels_sizes_and_kind(root: Path) -> None:
    before = _source(root, {"a.png": "x", "b.png": "y"}).fingerprint()
    relabelled = _source(root, {"a.png": "x", "b.png": "x"}).fingerprint()
    fewer = _source(root, {"a.png": "x"}).fingerprint()

    class _Other(_Files):
        kind = "other"

    other_kind = _Other(
        root,
        [ImageRecord("a.png", "x"), ImageRecord("b.png", "y")],
        [root / "a.png", root / "b.png"],
    ).fingerprint()
    Image.new("RGB", (40, 40)).save(root / "b.png")
    resized = _source(root, {"a.png": "x", "b.png": "y"}).fingerprint()

    assert len({before, relabelled, fewer, other_kind, resized}) == 5


def test_file_size_is_minus_one_for_a_missing_file(root: Path) -> None:
    assert file_size(root / "a.png") == (root / "a.png").stat().st_size > 0
    assert file_size(root / "missing.png") == -1


def test_load_image_decodes_by_index(root: Path) -> None:
    source = _source(root, {"a.png": None, "b.png": None})

    assert first_pixel(source.load_image(1)) == (20, 235, 7)
    assert source.load_mask(1) is None
