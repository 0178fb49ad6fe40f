"""Checks of the numbers in config dataclasses (what the CLI's :mod:`traitlens.cli_args` types check
at parse time, checked again for Python callers, so a bad value is one line before any work) and
of values read from artifacts' JSON.

``name`` is how a value is spelled for people (the option, e.g. ``--batch-size``).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from typing import Any

from traitlens.errors import TraitlensError


def check_int(value: object, name: str, error: type[TraitlensError], minimum: int = 1) -> None:
    """Refuse anything but an integer (NumPy's too) of at least ``minimum`` (``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise error(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_float(value: object, name: str, error: type[TraitlensError], minimum: float = 0.0, *,
                above: bool = False, below: float | None = None) -> None:
    """Refuse anything but a finite number of at least ``minimum`` (above it with ``above``) and
    below ``below`` when given."""
    try:
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer beyond any float
        number = math.nan
    if not math.isfinite(number) or number < minimum or (above and number == minimum) or (below is not None and number >= below):
        bounds = f"{'above' if above else 'at least'} {minimum:g}" + ("" if below is None else f" and below {below:g}")
        raise error(f"{name} must be a finite number {bounds}, got {value!r}")


def saved_class_names(value: Any) -> tuple[str, ...]:
    """Class names read from an artifact's JSON: a list of distinct non-empty strings, else ValueError."""
    if not isinstance(value, list) or not value or not all(isinstance(name, str) and name for name in value) \
            or len(set(value)) != len(value):
        raise ValueError("class_names must be a list of distinct non-empty names")
    return tuple(value)


def shown_key(key: str) -> str:
    """A key as shown in a field path; quoted when it is not a plain name (it may hold anything)."""
    return key if re.fullmatch(r"[\w.\-]+", key) else json.dumps(key)
