from pathlib import Path

import numpy as np
import pytest

from traitlens.data.images import UnreadableImageError
from traitlens.data.segmentation import SegmentationSource
from traitlens.data.source import ImageRecord
from traitlens.errors import DataError

from .builders import write_image, write_label_map, write_random_bytes

LABELS_HW = np.array([[0, 0, 3, 3], [1, 2, 3, 0], [1, 1, 7, 200]])


def test_masks_are_matched_by_stem_and_keep_their_values(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "b.jpg")
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "no_mask.png")
    write_label_map(tmp_path / "annotations" / "a.png", LABELS_HW, mode="P")
    write_label_map(tmp_path / "annotations" / "b.png", LABELS_HW[::-1], mode="L")

    source = SegmentationSource(tmp_path)

    assert source.kind == "segmentation"
    assert source.records == [
        ImageRecord("images/a.png", None),
        ImageRecord("images/b.jpg", None),
        ImageRecord("images/no_mask.png", None),
    ]
    assert source.class_names is None
    assert source.mask_names is None
    mask_a, mask_b = source.load_mask(0), source.load_mask(1)
    assert mask_a is not None and mask_b is not None
    assert mask_a.dtype == np.int64
    np.testing.assert_array_equal(mask_a, LABELS_HW)
    np.testing.assert_array_equal(mask_b, LABELS_HW[::-1])
    assert source.load_mask(2) is None


@pytest.mark.parametrize("names_file", ["names.txt", "classes.txt"])
def test_mask_names_come_from_the_names_file(tmp_path: Path, names_file: str) -> None:
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    (tmp_path / names_file).write_text("background\n\nbeak\n wing \n\n")

    assert SegmentationSource(tmp_path).mask_names == ["background", "", "beak", "wing"]


def test_a_names_file_that_is_not_utf8_is_a_data_error(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "names.txt").write_bytes(b"background\n\xff\xfewing\n")

    with pytest.raises(DataError, match=r"names\.txt: not UTF-8"):
        SegmentationSource(tmp_path)


def test_names_txt_wins_over_classes_txt(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "names.txt").write_text("from_names\n")
    (tmp_path / "classes.txt").write_text("from_classes\n")

    assert SegmentationSource(tmp_path).mask_names == ["from_names"]


def test_nested_layout_matches_by_relative_path_first(tmp_path: Path) -> None:
    # ADE20K style: the same stem in two splits must pick the mask of the image's own split.
    write_image(tmp_path / "images" / "train" / "x.jpg")
    write_image(tmp_path / "images" / "val" / "x.jpg")
    write_label_map(tmp_path / "annotations" / "train" / "x.png", LABELS_HW)
    write_label_map(tmp_path / "annotations" / "val" / "x.png", LABELS_HW + 1)

    source = SegmentationSource(tmp_path)

    np.testing.assert_array_equal(source.load_mask(0), LABELS_HW)
    np.testing.assert_array_equal(source.load_mask(1), LABELS_HW + 1)


def test_unique_stem_elsewhere_in_annotations_matches(tmp_path: Path) -> None:
    # Oxford-IIIT Pets style: flat images, masks in annotations/trimaps/.
    write_image(tmp_path / "images" / "Abyssinian_1.jpg")
    write_label_map(tmp_path / "annotations" / "trimaps" / "Abyssinian_1.png", LABELS_HW)

    np.testing.assert_array_equal(SegmentationSource(tmp_path).load_mask(0), LABELS_HW)


def test_ambiguous_stem_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "x.jpg")
    write_label_map(tmp_path / "annotations" / "one" / "x.png", LABELS_HW)
    write_label_map(tmp_path / "annotations" / "two" / "x.png", LABELS_HW)

    with pytest.raises(DataError, match="matches several annotations"):
        SegmentationSource(tmp_path)


def test_corrupt_or_mis_sized_mask_fails_for_that_image_only(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "bad.png")
    write_image(tmp_path / "images" / "good.png")
    write_image(tmp_path / "images" / "small.png")
    write_random_bytes(tmp_path / "annotations" / "bad.png")
    write_label_map(tmp_path / "annotations" / "good.png", LABELS_HW)
    write_label_map(tmp_path / "annotations" / "small.png", LABELS_HW[:2])
    source = SegmentationSource(tmp_path)

    with pytest.raises(UnreadableImageError, match=r"cannot read mask annotations/bad\.png"):
        source.load_mask(0)
    with pytest.raises(UnreadableImageError, match=r"is 2x4 \(h x w\) but image .* is 3x4"):
        source.load_mask(2)
    np.testing.assert_array_equal(source.load_mask(1), LABELS_HW)
    assert source.load_image(0).size == (4, 3)


def test_fingerprint_changes_when_a_mask_is_added(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    before = SegmentationSource(tmp_path).fingerprint()
    write_label_map(tmp_path / "annotations" / "a.png", LABELS_HW)

    assert SegmentationSource(tmp_path).fingerprint() != before


def test_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    write_label_map(tmp_path / "annotations" / "a.png", LABELS_HW)

    with pytest.raises(DataError, match=r"no images found in .*images"):
        SegmentationSource(tmp_path)


def test_images_in_class_subfolders_carry_their_class_as_label(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "heron" / "a.png")
    write_image(tmp_path / "images" / "egret" / "b.png")
    write_label_map(tmp_path / "annotations" / "heron" / "a.png", LABELS_HW)
    write_label_map(tmp_path / "annotations" / "egret" / "b.png", LABELS_HW)

    source = SegmentationSource(tmp_path)

    assert [(r.source, r.label) for r in source.records] == [("images/egret/b.png", "egret"), ("images/heron/a.png", "heron")]
    assert source.class_names == ["egret", "heron"]


def test_images_directly_in_images_have_no_label(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "heron" / "b.png")

    assert [r.label for r in SegmentationSource(tmp_path).records] == [None, None]
