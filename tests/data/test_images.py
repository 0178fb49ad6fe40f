from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from traitlens.data.images import (
    UnreadableImageError,
    decode_image,
    decode_label_map,
    find_images,
)
from traitlens.errors import DataError

from .builders import write_image, write_label_map, write_random_bytes, write_truncated_jpeg


def test_unreadable_image_error_is_a_data_error() -> None:
    assert issubclass(UnreadableImageError, DataError)


def test_find_images_matches_extensions_in_any_case_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpeg", "c.Tiff", "d.webp", ".hidden.png"]:
        write_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    write_image(tmp_path / "sub" / "e.bmp")
    write_image(tmp_path / ".cache" / "f.png")

    flat = [path.name for path in find_images(tmp_path, recursive=False)]
    deep = [path.relative_to(tmp_path).as_posix() for path in find_images(tmp_path, recursive=True)]

    assert flat == ["a.jpeg", "b.PNG", "c.Tiff", "d.webp"]
    assert deep == ["a.jpeg", "b.PNG", "c.Tiff", "d.webp", "sub/e.bmp"]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "1"])
def test_decode_image_gives_rgb_of_the_same_size(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "x.tiff"
    Image.new(mode, (5, 2)).save(path)

    image = decode_image(path, "x.tiff")

    assert (image.mode, image.size) == ("RGB", (5, 2))


def test_decode_image_reads_a_real_photo_exactly_from_png(tmp_path: Path) -> None:
    photo_hw3 = skimage.data.chelsea()
    Image.fromarray(photo_hw3).save(tmp_path / "chelsea.png")

    image = decode_image(tmp_path / "chelsea.png", "chelsea.png")

    np.testing.assert_array_equal(np.asarray(image), photo_hw3)


def test_decode_image_rejects_random_bytes_naming_the_file(tmp_path: Path) -> None:
    path = write_random_bytes(tmp_path / "noise.png")

    with pytest.raises(UnreadableImageError, match=r"cannot read image cats/noise\.png: "):
        decode_image(path, "cats/noise.png")


def test_decode_image_rejects_a_truncated_jpeg(tmp_path: Path) -> None:
    path = write_truncated_jpeg(tmp_path / "cut.jpg", Image.fromarray(skimage.data.chelsea()))

    with pytest.raises(UnreadableImageError, match="truncated"):
        decode_image(path, "cut.jpg")


def test_decode_image_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImageError, match=r"gone\.png"):
        decode_image(tmp_path / "gone.png", "gone.png")


@pytest.mark.parametrize("mode", ["L", "P"])
def test_decode_label_map_keeps_stored_indices(tmp_path: Path, mode: str) -> None:
    labels_hw = np.array([[0, 3, 200], [7, 1, 0]])
    path = write_label_map(tmp_path / "m.png", labels_hw, mode)

    decoded = decode_label_map(path, "m.png")

    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, labels_hw)


def test_decode_label_map_keeps_16_bit_indices(tmp_path: Path) -> None:
    labels_hw = np.array([[0, 300], [65535, 2]], dtype=np.uint16)
    Image.fromarray(labels_hw).save(tmp_path / "m.png")

    np.testing.assert_array_equal(decode_label_map(tmp_path / "m.png", "m.png"), labels_hw)


def test_decode_label_map_uses_the_first_channel_of_rgb(tmp_path: Path) -> None:
    rgb_hw3 = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb_hw3[..., 0] = [[1, 2], [3, 4]]
    rgb_hw3[..., 1] = 99
    Image.fromarray(rgb_hw3).save(tmp_path / "m.png")

    np.testing.assert_array_equal(decode_label_map(tmp_path / "m.png", "m.png"), [[1, 2], [3, 4]])


def test_decode_label_map_rejects_float_pixels(tmp_path: Path) -> None:
    Image.fromarray(np.ones((2, 2), dtype=np.float32)).save(tmp_path / "m.tiff")

    with pytest.raises(UnreadableImageError, match="float32"):
        decode_label_map(tmp_path / "m.tiff", "m.tiff")


def test_decode_label_map_rejects_random_bytes(tmp_path: Path) -> None:
    path = write_random_bytes(tmp_path / "m.png")

    with pytest.raises(UnreadableImageError, match=r"cannot read mask annotations/m\.png"):
        decode_label_map(path, "annotations/m.png")
