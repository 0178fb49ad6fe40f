from pathlib import Path

import numpy as np
import pytest

from traitlens.data.folders import ClassFolderSource, ImageFolderSource, open_folder
from traitlens.data.images import UnreadableImageError
from traitlens.data.source import ImageRecord
from traitlens.errors import DataError

from .builders import first_pixel, write_image, write_random_bytes


def test_class_folder_labels_by_top_subfolder_including_nested_files(tmp_path: Path) -> None:
    write_image(tmp_path / "wren" / "2.png")
    write_image(tmp_path / "wren" / "1.JPG")
    write_image(tmp_path / "finch" / "male" / "a.png")
    write_image(tmp_path / "finch" / "b.webp")
    write_image(tmp_path / "finch" / "male-x.png")
    write_image(tmp_path / "finch" / ".thumbs" / "c.png")
    (tmp_path / "empty").mkdir()

    source = open_folder(tmp_path)

    assert isinstance(source, ClassFolderSource)
    assert source.kind == "class_folder"
    assert source.records == [
        ImageRecord("finch/b.webp", "finch"),
        # Sorted as strings: "-" sorts before "/", unlike a part-by-part path sort.
        ImageRecord("finch/male-x.png", "finch"),
        ImageRecord("finch/male/a.png", "finch"),
        ImageRecord("wren/1.JPG", "wren"),
        ImageRecord("wren/2.png", "wren"),
    ]
    assert source.class_names == ["finch", "wren"]
    assert source.mask_names is None


def test_class_folder_loads_each_record_from_its_own_file(tmp_path: Path) -> None:
    write_image(tmp_path / "b" / "x.png", value=200)
    write_image(tmp_path / "a" / "x.png", value=100)

    source = open_folder(tmp_path)

    assert [first_pixel(source.load_image(i))[0] for i in range(2)] == [100, 200]


def test_image_folder_has_sorted_unlabelled_records(tmp_path: Path) -> None:
    for name in ["b.png", "a.jpg", "C.bmp"]:
        write_image(tmp_path / name)
    (tmp_path / "readme.md").write_text("no images here")
    (tmp_path / "empty_dir").mkdir()

    source = open_folder(tmp_path)

    assert isinstance(source, ImageFolderSource)
    assert [record.source for record in source.records] == ["C.bmp", "a.jpg", "b.png"]
    assert all(record.label is None for record in source.records)
    assert source.class_names is None
    assert source.load_image(0).size == (4, 3)


def test_corrupt_image_fails_alone(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.png")
    write_random_bytes(tmp_path / "cat" / "b.png")
    write_image(tmp_path / "dog" / "c.png")
    source = open_folder(tmp_path)

    with pytest.raises(UnreadableImageError, match=r"cat/b\.png"):
        source.load_image(1)
    assert [np.asarray(source.load_image(i)).shape for i in (0, 2)] == [(3, 4, 3)] * 2


def test_images_both_loose_and_in_subfolders_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "stray.png")
    write_image(tmp_path / "cat" / "a.png")

    with pytest.raises(
        DataError, match=r"both directly \(e\.g\. stray\.png\) and in subfolders \(cat\)"
    ):
        open_folder(tmp_path)


def test_folder_without_images_names_the_extensions(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    write_image(tmp_path / ".hidden" / "a.png")

    with pytest.raises(DataError, match=r"no images found in .* \(looked for .*\.jpg.*\.png"):
        open_folder(tmp_path)


def test_fingerprint_is_stable_until_a_file_is_added_or_moved(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.png")
    write_image(tmp_path / "dog" / "b.png")
    before = open_folder(tmp_path).fingerprint()
    same = open_folder(tmp_path).fingerprint()
    write_image(tmp_path / "dog" / "c.png")
    added = open_folder(tmp_path).fingerprint()
    (tmp_path / "dog" / "c.png").rename(tmp_path / "cat" / "c.png")
    relabelled = open_folder(tmp_path).fingerprint()

    assert before == same
    assert len({before, added, relabelled}) == 3
