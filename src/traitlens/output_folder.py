"""The one output policy of every command that writes files.

- An output that is, or would sit inside, a file is refused before any work.
- A folder that is not empty and was not written by the same command is never touched.
- The same command's earlier folder is resumed (resumable jobs: extract, train, features, ...) or,
  for one-shot jobs, refused unless ``--overwrite`` is given; ``--overwrite`` only ever replaces
  this command's own output.
- Files are written atomically (``store.atomic``), so no reader ever sees half a file.

Ownership is recorded in ``traitlens-output.json`` (``{"format": "traitlens-output", "command": ...}``);
folders written before that file existed are recognized by files only their command writes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traitlens.checks import shown_key
from traitlens.errors import TraitlensError

OWNER_FILE = "traitlens-output.json"
OWNER_FORMAT = "traitlens-output"


def check_output_folder(out: Path, error: type[TraitlensError] = TraitlensError, option: str = "--out") -> None:
    """Raise ``error`` (one line) when ``out`` is a file or one of its parents is: the job would
    otherwise fail only when it first writes, after its work."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file, not a folder" if path == out else f"cannot be created: {path} is a file"
                raise error(f"{option} {out} {where}")
            return


def output_owner(out: Path) -> str | None:
    """The command that wrote ``out`` according to its owner file; None when unknown."""
    try:
        data = json.loads((out / OWNER_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and data.get("format") == OWNER_FORMAT and isinstance(data.get("command"), str):
        return data["command"]
    return None


def _clear(out: Path, error: type[TraitlensError]) -> None:
    try:
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    except OSError as cause:
        raise error(f"cannot clear {out} for --overwrite: {cause.strerror or cause}") from cause


def claim_output_folder(out: Path, command: str, *, overwrite: bool = False, resumable: bool = False,
                        own_files: Sequence[str] = (), error: type[TraitlensError] = TraitlensError,
                        option: str = "--out") -> bool:
    """Apply the policy above to ``out`` for ``command`` (e.g. ``"explain"``) and make the folder.

    Returns True when ``out`` holds this command's earlier output and the job is resumable: the
    job then checks that output is its own (same inputs) and continues it. ``own_files`` are files
    only this command writes, so that folders from before the owner file are recognized.
    """
    check_output_folder(out, error, option)
    from traitlens.atomic import atomic_write_json

    try:
        # a folder holding nothing but this command's own mark is a run that failed before its
        # first result (a misspelled class found once the model loaded): as good as empty
        occupied = out.is_dir() and any(child.name != OWNER_FILE for child in out.iterdir())
    except OSError as cause:
        raise error(f"cannot read {option} {out}: {cause.strerror or cause}") from cause
    if not occupied and out.is_dir() and output_owner(out) not in (None, command):
        occupied = True
    if occupied:
        owner = output_owner(out)
        if owner is None and any((out / name).exists() for name in own_files):
            owner = command
        if owner != command:
            whose = f"holds the output of traitlens {owner}" if owner else "is not empty and holds no traitlens output"
            raise error(f"{option} {out} {whose}; choose a new or empty folder for traitlens {command}")
        if resumable and not overwrite:
            return True
        if not overwrite:
            raise error(f"{option} {out} already holds a traitlens {command} result; pass --overwrite to replace it, "
                        "or choose another folder")
        _clear(out, error)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / OWNER_FILE, {"format": OWNER_FORMAT, "command": command})
    except OSError as cause:
        raise error(f"cannot write to {option} {out}: {cause.strerror or cause}") from cause
    return False


def refuse_another_job(out: Path, what: str, previous: dict[str, Any], job: dict[str, Any],
                       error: type[TraitlensError] = TraitlensError) -> None:
    """Raise ``error`` naming the settings that differ when the ``job`` a resumable command was given
    is not the one whose output (``what``, e.g. ``"features"``) ``out`` holds."""
    if previous != job:
        changed = sorted(shown_key(key) for key in set(job) | set(previous) if job.get(key) != previous.get(key))
        raise error(f"{out} holds {what} of another job (different {', '.join(changed)}); "
                    "choose another --out, or pass --overwrite to replace it")


def claim_output_file(path: Path, *, overwrite: bool = False, error: type[TraitlensError] = TraitlensError,
                      option: str = "--out") -> None:
    """The policy for a command whose output is one file (a metrics JSON): a folder or an existing
    file there is refused unless ``--overwrite`` (files only); its folder must be creatable."""
    check_output_folder(path.parent, error, option)
    if path.is_dir():
        raise error(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise error(f"{option} {path} already exists; pass --overwrite to replace it, or choose another file")
