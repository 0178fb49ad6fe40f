"""Output folders: refused before any work when they are, or would sit inside, a file."""

from __future__ import annotations

from pathlib import Path

from traitlens.errors import TraitlensError


def check_output_folder(out: Path, error: type[TraitlensError] = TraitlensError, option: str = "--out") -> None:
    """Raise ``error`` (one line) when ``out`` is a file or one of its parents is: the job would
    otherwise fail only when it first writes, after its work."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file, not a folder" if path == out else f"cannot be created: {path} is a file"
                raise error(f"{option} {out} {where}")
            return
