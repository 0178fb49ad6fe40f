"""What a job left on disk, for tests that compare a resumed run with an uninterrupted one."""

from __future__ import annotations

from pathlib import Path


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) by relative POSIX path."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}
