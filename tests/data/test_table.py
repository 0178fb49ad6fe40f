import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traitlens.data.images import UnreadableImageError
from traitlens.data.source import ImageRecord
from traitlens.data.table import TableSource
from traitlens.errors import DataError

from .builders import first_pixel, write_image


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as file:
        csv.writer(file).writerows(rows)
    return path


def test_csv_rows_resolve_relative_to_the_table_in_row_order(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "z.png", value=30)
    write_image(tmp_path / "imgs" / "a.png", value=60)
    table = _write_csv(
        tmp_path / "list.csv",
        [["id", "Filepath", "species"], ["1", "imgs/z.png", "wren"], ["2", "imgs/a.png", ""]],
    )

    source = TableSource(table)

    assert source.kind == "table"
    assert source.records == [ImageRecord("imgs/z.png", "wren"), ImageRecord("imgs/a.png", None)]
    assert source.class_names == ["wren"]
    assert [first_pixel(source.load_image(i))[0] for i in (0, 1)] == [30, 60]


def test_csv_prefers_path_column_by_priority_not_position(tmp_path: Path) -> None:
    write_image(tmp_path / "right.png")
    table = _write_csv(
        tmp_path / "t.csv", [["file", "path", "class"], ["wrong.png", "right.png", "3"]]
    )

    assert TableSource(table).records == [ImageRecord("right.png", "3")]


def test_parquet_with_absolute_paths_and_no_label(tmp_path: Path) -> None:
    image_path = write_image(tmp_path / "elsewhere" / "x.png")
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [str(image_path)], "width": [4]}), table)

    source = TableSource(table)

    assert source.records == [ImageRecord(str(image_path), None)]
    assert source.class_names is None
    assert source.load_image(0).size == (4, 3)


def test_parquet_integer_labels_become_strings(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"path": ["a.png", "a.png"], "label": [7, None]}), table)

    assert [record.label for record in TableSource(table).records] == ["7", None]


def test_missing_file_fails_at_load_not_at_open(tmp_path: Path) -> None:
    write_image(tmp_path / "here.png")
    table = _write_csv(tmp_path / "t.csv", [["path"], ["gone.png"], ["here.png"]])

    source = TableSource(table)

    with pytest.raises(UnreadableImageError, match=r"cannot read image gone\.png"):
        source.load_image(0)
    assert source.load_image(1).mode == "RGB"


def test_missing_path_column_names_the_columns_found(tmp_path: Path) -> None:
    table = _write_csv(tmp_path / "t.csv", [["url", "label"], ["a.png", "x"]])

    with pytest.raises(DataError, match=r"expected one of path, image, .*found url, label"):
        TableSource(table)


def test_empty_path_cell_is_an_error(tmp_path: Path) -> None:
    table = _write_csv(tmp_path / "t.csv", [["path"], ["a.png"], [" "]])

    with pytest.raises(DataError, match="row 2 has an empty 'path' cell"):
        TableSource(table)


def test_header_only_table_is_an_error(tmp_path: Path) -> None:
    table = _write_csv(tmp_path / "t.csv", [["path", "label"]])

    with pytest.raises(DataError, match="no rows"):
        TableSource(table)


def test_unparseable_parquet_is_a_data_error(tmp_path: Path) -> None:
    table = tmp_path / "t.parquet"
    table.write_text("path,label\n")

    with pytest.raises(DataError, match="cannot read table"):
        TableSource(table)


def test_a_path_with_a_nul_byte_is_an_unreadable_image(tmp_path: Path) -> None:
    pq.write_table(pa.table({"path": ["a\x00.png"]}), tmp_path / "t.parquet")

    source = TableSource(tmp_path / "t.parquet")

    assert len(source.fingerprint()) == 64
    with pytest.raises(UnreadableImageError, match="cannot read image"):
        source.load_image(0)
