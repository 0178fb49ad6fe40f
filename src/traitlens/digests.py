"""Content digests of the files a job reads, so that a resumed job is refused when one of them
changed under the same path."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in blocks; OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(folder: Path, names: tuple[str, ...]) -> str:
    """One SHA-256 over the named files of ``folder`` (name and digest of each, in order; a
    missing file counts as absent, so its appearance changes the digest too)."""
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        digest.update(f"{name}\0{file_sha256(path) if path.is_file() else '-'}\n".encode())
    return digest.hexdigest()
