"""The CLI's vocabulary (docs/cli.md), checked on every command's real parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from traitlens.cli import build_parser, main
from traitlens.cli_args import iter_commands, options_of, positive_int

COMMANDS = dict(iter_commands(build_parser()))
CPU_ONLY = {"specimens train-model", "specimens report", "probe"}
"""Commands whose numbers must be identical from machine to machine (docs/cli.md): no --device."""
NO_COMPUTE = {"inspect", "layers"}
"""Commands that read a store or build a model only to describe it: nothing to place on a device."""
RUNS_TENSORS = ("--model", "--sae", "--acts")
COUNT_WORDS = ("--tokens", "--images", "--n", "--latents", "--refs")
"""Bare nouns that once meant a count in one command and something else in another."""


def _options(command: str) -> dict[str, argparse.Action]:
    return {name: action for action in options_of(COMMANDS[command]) for name in action.option_strings}


def test_every_command_is_walked() -> None:
    assert {"extract", "train", "evaluate", "explain", "specimens report", "specimens score discovery"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_word_means_one_thing(command: str) -> None:
    options = _options(command)
    if "--out" in options:
        assert any(word in (options["--out"].help or "") for word in ("folder", "directory")), f"{command} --out is not a folder"
    if "--data" in options:
        text = options["--data"].help or ""
        assert any(word in text for word in ("folder", "benchmark", "image")), f"{command} --data is not an image source"
    if "--batch-size" in options:
        text = options["--batch-size"].help or ""
        assert "images" in text or "tokens" in text, f"{command} --batch-size does not name its unit"
    for name, action in options.items():
        if action.type is positive_int and name in COUNT_WORDS:
            pytest.fail(f"{command} {name} is a count without n- (use --n-{name.removeprefix('--')})")
    if command not in CPU_ONLY | NO_COMPUTE and any(name in options for name in RUNS_TENSORS):
        assert "--device" in options, f"{command} runs tensors but has no --device"
    if "--device" in options:
        assert options["--device"].default == "auto", f"{command} --device defaults to {options['--device'].default}"
    for old, new in getattr(COMMANDS[command], "old_spellings", {}).items():
        assert new in options and old not in options, f"{command}: the old {old} must lead to an existing {new}"


def test_docs_list_every_command_and_option() -> None:
    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    for command in COMMANDS:
        section = text.split(f"\n### {command}\n", 1)
        assert len(section) == 2, f"docs/cli.md has no section for {command}"
        body = section[1].split("\n### ", 1)[0]
        for name in _options(command):
            if name.startswith("--"):
                assert f"`{name}" in body, f"docs/cli.md does not list {command} {name}"


def test_an_old_spelling_still_works_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["specimens", "generate", "--out", str(tmp_path / "s"), "--n", "16", "--seed", "3"]) == 0
    err = capsys.readouterr().err
    assert "--n is now --n-images; the old spelling goes in the next release" in err and err.count("is now") == 1
    assert len(list((tmp_path / "s" / "images").rglob("*.png"))) == 16
    # the new spelling says nothing
    assert main(["specimens", "generate", "--out", str(tmp_path / "t"), "--n-images=16", "--seed", "3"]) == 0
    assert "is now" not in capsys.readouterr().err
