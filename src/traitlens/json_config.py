"""Reading the JSON files that describe traitlens artifacts (store manifests, SAE and head configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlens.errors import TraitlensError


def read_json_config(path: Path, format_name: str, what: str, error: type[TraitlensError], missing: str,
                     version: int | None = None) -> dict[str, Any]:
    """The JSON object at ``path``, checked to be a traitlens ``what`` of ``format_name`` (and of
    ``version`` when given); every failure is one ``error`` line, ``missing`` when there is no file."""
    if not path.is_file():
        raise error(missing)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as cause:
        raise error(f"damaged {what} {path}: {cause}") from cause
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise error(f"{path} is not a traitlens {what}")
    if version is not None and data.get("version") != version:
        raise error(f"{path} has {what} version {data.get('version')}; this traitlens reads version {version}")
    return data
