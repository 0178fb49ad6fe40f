"""Markdown tables and text files for score reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from traitlens.atomic import atomic_write_bytes


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` of ``rows``: floats with 3 decimals, None as ``n/a``,
    numeric columns right-aligned."""

    def numeric(column: str) -> bool:
        values = [row.get(column) for row in rows if row.get(column) is not None]
        return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)

    lines = ["| " + " | ".join(_cell(column) for column in columns) + " |",
             "|" + "|".join("---:" if numeric(column) else "---" for column in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
