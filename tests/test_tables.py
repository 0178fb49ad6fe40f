"""Markdown tables of scores."""

from __future__ import annotations

from traitlens.tables import markdown_table


def test_markdown_table_formats_and_aligns() -> None:
    rows = [{"trait": "a|b", "ap": 0.5, "n": 3}, {"trait": "c", "ap": None, "n": 4}]
    assert markdown_table(rows, ["trait", "ap", "n"]) == (
        "| trait | ap | n |\n|---|---:|---:|\n| a\\|b | 0.500 | 3 |\n| c | n/a | 4 |\n"
    )
