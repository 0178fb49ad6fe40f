"""Reading the JSON files that describe traitlens artifacts (store manifests, SAE and head configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlens.errors import TraitlensError


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_standard_json(raw: bytes) -> Any:
    """UTF-8 JSON without Python's NaN/Infinity extension (which would turn into NaN weights or
    a file that cannot be written back); raises ValueError (UnicodeDecodeError is one)."""
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)


def read_json_config(path: Path, format_name: str, what: str, error: type[TraitlensError], missing: str,
                     version: int | None = None) -> dict[str, Any]:
    """The JSON object at ``path``, checked to be a traitlens ``what`` of ``format_name`` (and of
    ``version`` when given); every failure is one ``error`` line, ``missing`` when there is no file."""
    if not path.is_file():
        raise error(missing)
    try:
        data = parse_standard_json(path.read_bytes())
    except (OSError, ValueError, RecursionError) as cause:
        raise error(f"damaged {what} {path}: {cause}") from cause
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise error(f"{path} is not a traitlens {what}")
    found = data.get("version")
    if version is not None and (type(found) is not int or found != version):  # True == 1 is no version
        raise error(f"{path} has {what} version {found!r}; this traitlens reads version {version}")
    return data
