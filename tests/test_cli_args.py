"""The CLI's shared vocabulary: numeric types checked at parse time, one-line parser errors."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traitlens.cli_args import (
    OneLineParser,
    comma_list,
    fraction,
    join_negative_values,
    non_negative_float,
    non_negative_int,
    patch_grid,
    positive_float,
    positive_int,
    unit_interval,
)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=8))
def test_positive_int_accepts_exactly_the_integers_of_at_least_one(text: str) -> None:
    try:
        expected: int | None = int(text)
    except ValueError:
        expected = None
    if expected is not None and expected >= 1:
        assert positive_int(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(text)


@pytest.mark.parametrize("parse", [positive_float, non_negative_float, fraction, unit_interval])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "abc", ""])
def test_no_float_type_lets_a_non_number_through(parse, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_ranges() -> None:
    assert non_negative_int("0") == 0 and non_negative_float("0") == 0.0 and fraction("0") == 0.0
    assert unit_interval("1") == 1.0 and math.isclose(positive_float("1e-9"), 1e-9)
    for parse, text in ((positive_float, "0"), (fraction, "1"), (unit_interval, "0"), (non_negative_int, "-1")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_comma_lists_check_every_item() -> None:
    assert comma_list(positive_int)("16, 32") == (16, 32)
    for text in ("16,", "16,abc", ",", "16,0"):
        with pytest.raises(argparse.ArgumentTypeError):
            comma_list(positive_int)(text)


def test_negative_number_lists_are_values_not_options() -> None:
    assert join_negative_values(["--layers", "-2,-1", "--k", "-1"]) == ["--layers=-2,-1", "--k", "-1"]
    assert join_negative_values(["--layers=-2,-1"]) == ["--layers=-2,-1"]
    assert join_negative_values(["-2,-1"]) == ["-2,-1"]


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="traitlens demo")
    parser.add_argument("--n", type=positive_int)
    return parser


@pytest.mark.parametrize("argv", [["--n", "0"], ["--n=--"], ["--bogus"], ["--n"]])
def test_parser_errors_are_one_line_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args(argv)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("traitlens demo: error: ")


@pytest.mark.parametrize(("text", "grid"), [("8x8", (8, 8)), ("14X12", (14, 12)), ("7", (7, 7))])
def test_a_patch_grid_is_rows_by_columns_or_one_side(text: str, grid: tuple[int, int]) -> None:
    assert patch_grid(text) == grid


@pytest.mark.parametrize("text", ["", "x", "8x", "0x8", "8x8x8", "-1x2", "2.5x2", "eight"])
def test_a_bad_patch_grid_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="a patch grid such as 8x8"):
        patch_grid(text)
