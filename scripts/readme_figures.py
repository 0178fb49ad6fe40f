"""What the README's figure scripts share: run the README's commands in a work folder (each skipped
when what it writes is already there), then save the picture atomically."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from traitlens.atomic import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
TRAITLENS = Path(sys.executable).with_name("traitlens")


def run_steps(work: Path, steps: list[tuple[str, str]]) -> None:
    """Each ``(what it writes, command after traitlens)`` in ``work``, unless it is written already."""
    work.mkdir(parents=True, exist_ok=True)
    for written, command in steps:
        if not (work / written).is_file():
            subprocess.run([str(TRAITLENS), *command.split()], cwd=work, check=True)


def save_figure(image: Image.Image, out: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {out}")


def figure_main(doc: str, work: str, out: str, steps: list[tuple[str, str]], figure: Callable[[Path], Image.Image]) -> int:
    """A figure script's command line: ``--work`` (default ``runs/WORK``) where the steps run,
    ``--out`` (default ``docs/images/OUT``) the picture ``figure(work)`` draws."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / work, help="where the README's commands run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / out)
    args = parser.parse_args()
    run_steps(args.work, steps)
    save_figure(figure(args.work), args.out)
    return 0
