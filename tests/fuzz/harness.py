"""What every bad input must get: one line on stderr, exit status 2, and every file that existed
before left exactly as it was (hashed before and after)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from traitlens.cli import main


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a root may be a file), keyed by path."""
    digests: dict[str, str] = {}
    for root in roots:
        files: Iterable[Path] = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """``traitlens ARGV`` in this process: (exit status, stdout, stderr); argparse exits count."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_refused(argv: Sequence[str], *watched: Path, says: str = "") -> str:
    """Run ``argv``; assert exit 2, exactly one non-empty stderr line (containing ``says``), and
    every file under ``watched`` unchanged with no file added there. Returns the line."""
    before = snapshot(*[path for path in watched if path.exists()])
    code, _, err = run_cli(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code} for {list(argv)}; stderr:\n{err}"
    assert len(lines) == 1 and "error" in lines[0], f"not one error line for {list(argv)}:\n{err}"
    assert "Traceback" not in err
    assert says.lower() in lines[0].lower(), f"{says!r} not in {lines[0]!r}"
    after = snapshot(*[path for path in watched if path.exists()])
    assert after == before, f"files changed by {list(argv)}: " + ", ".join(
        sorted(set(before.items()) ^ set(after.items()), key=str)[0][:1])
    return lines[0]
