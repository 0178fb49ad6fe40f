"""The CLI's shared vocabulary: a parser whose errors are one line, checked numeric option types,
and the options every model-loading or folder-writing command spells the same way.

Numbers are checked when the command line is parsed, so a bad one fails before any file is read.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

EXIT_USER_ERROR = 2

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` with its errors as one line (no usage block) and exit status 2, and options
    renamed in this release still read under their old spelling (:func:`rename_option`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old_spellings: dict[str, str] = {}

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if args is not None and self.old_spellings:
            args = [self._new_spelling(arg) for arg in args]
        return super().parse_known_args(args, namespace)

    def _new_spelling(self, arg: str) -> str:
        old, equals, value = arg.partition("=")
        new = self.old_spellings.get(old)
        if new is None:
            return arg
        sys.stderr.write(f"{self.prog}: {old} is now {new}; the old spelling goes in the next release\n")
        return new + equals + value

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USER_ERROR)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse drops a "--" value (``--n=--``) and hands the option an empty list, skipping its
        # type check; an option that takes one value must get one
        if arg_strings == ["--"] and action.nargs is None and action.option_strings:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one value")
        return super()._get_values(action, arg_strings)


def _number(kind: Callable[[str], T], text: str, what: str) -> T:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} expected, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what} expected, got {text!r}")
    return value


def _checked(kind: Callable[[str], T], what: str, accept: Callable[[T], bool]) -> Callable[[str], T]:
    """An argparse type: ``text`` read with ``kind`` and kept when ``accept`` says so; the error
    names ``what`` was expected."""

    def parse(text: str) -> T:
        value = _number(kind, text, what)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{what} expected, got {text!r}")
        return value

    parse.__name__ = what
    return parse


# counts of images, tokens, steps, batch sizes
positive_int = _checked(int, "an integer of at least 1", lambda value: value >= 1)
# seeds, offsets, counts that may be zero
non_negative_int = _checked(int, "an integer of at least 0", lambda value: value >= 0)
# learning rates, penalties, sizes
positive_float = _checked(float, "a finite number above 0", lambda value: value > 0)
# coefficients that may be switched off
non_negative_float = _checked(float, "a finite number of at least 0", lambda value: value >= 0)
# shares held out, in [0, 1)
fraction = _checked(float, "a number in [0, 1)", lambda value: 0 <= value < 1)
# levels from none to all, in [0, 1]
closed_unit_interval = _checked(float, "a number in [0, 1]", lambda value: 0 <= value <= 1)
# shares such as a minimum coverage, in (0, 1]
unit_interval = _checked(float, "a number in (0, 1]", lambda value: 0 < value <= 1)
# any finite number
finite_float = _checked(float, "a finite number", lambda value: True)


def patch_grid(text: str) -> tuple[int, int]:
    """An argparse type: a patch grid ``HxW`` (``8x8``), or ``N`` for a square one."""
    sides = text.lower().split("x")
    if len(sides) in (1, 2) and all(side.strip().isdigit() and int(side) >= 1 for side in sides):
        return (int(sides[0]), int(sides[-1]))
    raise argparse.ArgumentTypeError(f"a patch grid such as 8x8 (rows x columns, each at least 1) expected, got {text!r}")


def comma_list(item: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    """``1,2,3`` read with ``item`` for each value (a sweep); empty values are refused."""

    def parse(text: str) -> tuple[T, ...]:
        parts = text.split(",")
        if not all(part.strip() for part in parts):
            raise argparse.ArgumentTypeError(f"comma-separated values expected, got {text!r}")
        return tuple(item(part.strip()) for part in parts)

    parse.__name__ = f"list of {getattr(item, '__name__', 'values')}"
    return parse


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model SPEC``, ``--weights PATH`` and ``--random-init``, the same on every command."""
    parser.add_argument("--model", required=required, metavar="SPEC",
                        help="traitlens:specimens-vit (the embedded default), traitlens:DIR, timm:NAME, open_clip:ARCH/PRETRAINED, "
                             "hf:REPO_OR_DIR, torchvision:NAME (options: SPEC?key=value&...)")
    parser.add_argument("--weights", type=Path, metavar="PATH", help="local weights (safetensors, or torch file read with weights_only)")
    parser.add_argument("--random-init", action="store_true", help="random weights (seed 0) instead of pretrained ones")


def add_head_arg(parser: argparse.ArgumentParser, what: str = "its classes replace the model's own") -> None:
    """``--head DIR``, the same on every command that runs a classifier."""
    parser.add_argument("--head", type=Path, metavar="DIR",
                        help=f"a head folder (traitlens probe, or traitlens heads train: linear, prompt-cam, intr); {what}")


def rename_option(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """``old`` (an option this command had) still works for one release: it is read as ``new``,
    with one deprecation line on stderr."""
    if not isinstance(parser, OneLineParser):
        raise TypeError(f"{parser.prog} is not a OneLineParser, so it cannot read old spellings")
    parser.old_spellings[old] = new


def legacy_json_file(out: Path | None, command: str) -> Path | None:
    """An ``--out`` ending in ``.json`` that is not a folder: the file ``command`` wrote before
    ``--out`` meant a folder everywhere. Still written for one release, with one deprecation line."""
    if out is None or out.suffix != ".json" or out.is_dir():
        return None
    sys.stderr.write(f"traitlens {command}: --out FILE.json is now --out FOLDER; the file form goes in the next release\n")
    return out


DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: a GPU when there is one)"


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``, spelled and defaulted the same by every command that runs tensors."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_overwrite_arg(parser: argparse.ArgumentParser, resumable: bool = False) -> None:
    """``--overwrite``: replace this command's own earlier output (never anything else); on a
    resumable command, start it again from scratch instead of resuming or keeping it."""
    what = ("start again from scratch in an --out this command wrote (instead of resuming or keeping it"
            if resumable else "replace an earlier result of this same command in --out (")
    parser.add_argument("--overwrite", action="store_true", help=what + "; other folders are never touched)")


# A value such as ``-2,-1`` (block indices from the end) starts with a dash, so argparse would take
# it for an option; numbers and lists of numbers are never option names.
_NEGATIVE_VALUES = re.compile(r"^-\d+(\.\d+)?(,-?\d+(\.\d+)?)*$")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``["--layers", "-2,-1"]`` -> ``["--layers=-2,-1"]``, so argparse reads it as a value."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if (_NEGATIVE_VALUES.match(token) and "," in token and previous.startswith("--") and "=" not in previous):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


def option_name(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``: how a config field is spelled on the command line."""
    return "--" + dest.replace("_", "-")


def describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def iter_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command under ``parser`` (``"specimens score discovery"``) with its parser."""
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subcommands and path:
        yield " ".join(path), parser
    for action in subcommands:
        for name, subparser in action.choices.items():
            yield from iter_commands(subparser, (*path, name))


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options a command takes, in the order its help shows them (help and hidden ones left out)."""
    return [action for action in parser._actions if action.option_strings and action.help != argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction)]
