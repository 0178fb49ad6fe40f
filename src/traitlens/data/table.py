"""A CSV or Parquet table listing image paths and, optionally, their labels."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import pyarrow.parquet as pq

from traitlens.data.source import FileImageSource, ImageRecord
from traitlens.errors import DataError

TABLE_SUFFIXES = (".csv", ".parquet")
PATH_COLUMNS = ("path", "image", "filepath", "file", "filename")
LABEL_COLUMNS = ("label", "class", "species")


class TableSource(FileImageSource):
    """Images listed one per row of ``root`` (a .csv or .parquet file), in row order.

    Column names match case-insensitively; the path column is the first of ``PATH_COLUMNS``
    present and the label column the first of ``LABEL_COLUMNS`` present, if any. A record's
    source is the path as written; relative paths resolve against the table's directory. Rows
    whose file is missing are kept: reading them raises UnreadableImageError, so they are skipped
    and counted like corrupt images.
    """

    kind = "table"

    def __init__(self, root: Path) -> None:
        try:
            columns = _column_names(root)
            path_column = _pick(columns, PATH_COLUMNS)
            if path_column is None:
                raise DataError(
                    f"table {root} has no image path column: expected one of "
                    f"{', '.join(PATH_COLUMNS)}, found {', '.join(columns) or 'no columns'}"
                )
            label_column = _pick(columns, LABEL_COLUMNS)
            wanted = [path_column] if label_column is None else [path_column, label_column]
            cells = _read_columns(root, wanted)
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
            raise DataError(f"cannot read table {root}: {error}") from error
        if not cells[path_column]:
            raise DataError(f"table {root} has a header but no rows; expected one row per image")
        labels = (
            cells[label_column] if label_column is not None else [None] * len(cells[path_column])
        )
        records, paths = [], []
        for row_number, (path_cell, label_cell) in enumerate(
            zip(cells[path_column], labels, strict=True), 1
        ):
            source = _text(path_cell)
            if source is None:
                raise DataError(f"table {root} row {row_number} has an empty '{path_column}' cell")
            records.append(ImageRecord(source, _text(label_cell)))
            paths.append(root.parent / source)
        super().__init__(root, records, paths)


def _column_names(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        return list(pq.read_schema(path).names)
    with _open_csv(path) as file:
        return next(csv.reader(file), [])


def _read_columns(path: Path, names: list[str]) -> dict[str, list[object]]:
    """The cells of the named columns; only those columns are read from a Parquet file."""
    if path.suffix.lower() == ".parquet":
        table = pq.read_table(path, columns=names)
        return {name: table.column(name).to_pylist() for name in names}
    with _open_csv(path) as file:
        rows = list(csv.DictReader(file))
    return {name: [row[name] for row in rows] for name in names}


def _open_csv(path: Path) -> TextIO:
    # utf-8-sig drops the byte-order mark spreadsheet programs put before the first header.
    return path.open(newline="", encoding="utf-8-sig")


def _pick(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The actual name of the first candidate present in ``columns``, ignoring case and spaces."""
    for name in candidates:
        for column in columns:
            if column.strip().lower() == name:
                return column
    return None


def _text(value: object) -> str | None:
    """A cell as stripped text; None for null or blank cells."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None
