"""Checked reading of a store's files: JSON objects read through typed, range-checked fields, and
``.npy`` arrays whose header (dtype, shape, order, size) is checked before any data is used.

Every failure is one :class:`StoreError` line naming the file and the field. Nothing is unpickled:
an ``.npy`` header is parsed as text, and object arrays are refused by their dtype.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from traitlens.checks import shown_key
from traitlens.errors import StoreError, first_line
from traitlens.json_config import parse_standard_json


def _shown(value: Any) -> str:
    """A short one-line rendering of a (parsed) JSON value for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json_object(path: Path, what: str) -> Fields:
    """The JSON object in ``path`` (UTF-8, no NaN/Infinity), for typed reading of its fields."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{what} {path} is missing") from None
    except OSError as cause:
        raise StoreError(f"cannot read {what} {path}: {cause.strerror or cause}") from cause
    try:
        data = parse_standard_json(raw)
    except (ValueError, RecursionError) as cause:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StoreError(f"damaged {what} {path}: {first_line(cause)}") from cause
    return Fields(data, f"{what} {path}")


class Fields:
    """Typed access to one JSON object; ``where`` names it (file, then the keys leading to it)."""

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise StoreError(f"{where}: {prefix.rstrip('.') or 'the file'} is {_shown(data)}, expected a JSON object")
        self.data: dict[str, Any] = data
        self.where = where
        self.prefix = prefix

    def keys(self) -> list[str]:
        return list(self.data)

    def _bad(self, key: str, value: Any, expected: str) -> StoreError:
        return StoreError(f"{self.where}: {self.prefix}{shown_key(key)} is {_shown(value)}, expected {expected}")

    def value(self, key: str) -> Any:
        if key not in self.data:
            raise StoreError(f"{self.where}: {self.prefix}{shown_key(key)} is missing")
        return self.data[key]

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._bad(key, value, f"an integer of at least {minimum}")
        return value

    def number(self, key: str, minimum: float = -math.inf) -> float:
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value < math.inf:
            raise self._bad(key, value, "a finite number" + (f" of at least {minimum}" if minimum > -math.inf else ""))
        return float(value)

    def text(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str):
            raise self._bad(key, value, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.value(key) is None else self.text(key)

    def flag(self, key: str) -> bool:
        value = self.value(key)
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self.value(key)
        if value not in choices:
            raise self._bad(key, value, "one of " + ", ".join(choices))
        return str(value)

    def items(self, key: str) -> list[Any]:
        value = self.value(key)
        if not isinstance(value, list):
            raise self._bad(key, value, "a list")
        return value

    def child(self, key: str) -> Fields:
        return Fields(self.value(key), self.where, f"{self.prefix}{shown_key(key)}.")

    def optional_child(self, key: str) -> Fields | None:
        return None if self.value(key) is None else self.child(key)

    def children(self, key: str) -> list[Fields]:
        return [Fields(item, self.where, f"{self.prefix}{shown_key(key)}[{i}].") for i, item in enumerate(self.items(key))]

    def texts(self, key: str) -> list[str]:
        values = self.items(key)
        if not all(isinstance(value, str) for value in values):
            raise self._bad(key, values, "a list of strings")
        return values

    def optional_texts(self, key: str) -> list[str] | None:
        return None if self.value(key) is None else self.texts(key)

    def integers(self, key: str, length: int | None = None, minimum: int = 0) -> list[int]:
        values = self.items(key)
        if (length is not None and len(values) != length) or not all(
                isinstance(value, int) and not isinstance(value, bool) and value >= minimum for value in values):
            raise self._bad(key, values, (f"{length} " if length is not None else "") + f"integers of at least {minimum}")
        return values

    def numbers(self, key: str, length: int, minimum: float = -math.inf) -> np.ndarray:
        """``length`` finite numbers as float64."""
        values = self.items(key)
        if len(values) != length or not all(
                isinstance(value, int | float) and not isinstance(value, bool) and minimum <= value < math.inf for value in values):
            raise self._bad(key, values, f"{length} finite numbers" + (f" of at least {minimum}" if minimum > -math.inf else ""))
        return np.asarray(values, dtype=np.float64)


def _npy_header(path: Path, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) from the header of the ``.npy`` file ``path``."""
    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            return shape, fortran, dtype, handle.tell()
    except FileNotFoundError:
        raise StoreError(f"{what} {path} is missing") from None
    except OSError as cause:
        raise StoreError(f"cannot read {what} {path}: {cause.strerror or cause}") from cause
    except (ValueError, SyntaxError, EOFError) as cause:  # read_magic / the header's literal parser
        raise StoreError(f"{what} {path} is not a .npy array file: {first_line(cause)}") from cause


def read_array(path: Path, what: str, shape: tuple[int, ...], dtype: str, memory_map: bool) -> np.ndarray:
    """The ``.npy`` array at ``path``, checked to be a ``shape`` array of ``dtype`` (native byte
    order) with all its bytes present; memory-mapped read-only when ``memory_map``. Fortran order
    is read too: stores of CNN layers were written that way before shards were made C-ordered."""
    found_shape, _, found_dtype, offset = _npy_header(path, what)
    if found_dtype != np.dtype(dtype):
        raise StoreError(f"{what} {path} holds {found_dtype.str} ({found_dtype}) values; the store says {dtype}")
    if found_shape != shape:
        raise StoreError(f"{what} {path} has shape {found_shape}; the store says {shape}")
    expected_bytes = offset + math.prod(shape) * found_dtype.itemsize
    if path.stat().st_size < expected_bytes:
        raise StoreError(f"{what} {path} is truncated: {path.stat().st_size} bytes, {expected_bytes} expected")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)  # an empty array cannot be memory-mapped
    return np.load(path, mmap_mode="r" if memory_map else None, allow_pickle=False)
