"""What a job left on disk, and a kill in the middle of it, for tests that compare a resumed run
with an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) by relative POSIX path."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def kill_at_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int) -> None:
    """Make ``owner.name`` raise KeyboardInterrupt (what Ctrl-C raises) on its ``call``-th call,
    as if the job were killed there; ``monkeypatch.undo()`` restores it."""
    real = getattr(owner, name)
    calls = 0

    def killed(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, killed)


def outputs(root: Path, result: str) -> dict[str, object]:
    """:func:`file_bytes` with the JSON ``result`` file parsed and its ``config.out`` left out: the
    one field that names the folder, so two runs in two folders compare equal."""
    files: dict[str, object] = dict(file_bytes(root))
    parsed = json.loads(file_bytes(root)[result])
    del parsed["config"]["out"]
    return {**files, result: parsed}
