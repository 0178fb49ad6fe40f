"""Where training metrics go: a JSONL file always; TensorBoard or W&B only when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlens.atomic import atomic_write_bytes
from traitlens.errors import TraitlensError
from traitlens.sae.config import is_int

LOG_FILE = "train_log.jsonl"
SINKS = ("tensorboard", "wandb")


def _lines_until(path: Path, step: int) -> bytes:
    """The log's lines of steps up to ``step``. A last line without its newline is a write that a
    kill cut short (after the last checkpoint, so the resumed run writes it again): dropped. Any
    other line that is not a record is damage, refused rather than silently lost."""
    *lines, _torn = path.read_bytes().split(b"\n")
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:  # bad JSON or bad UTF-8
            record = None
        if not isinstance(record, dict) or not is_int(record.get("step")):
            raise TraitlensError(f"damaged training log {path}: line {number} is not a log record")
        if record["step"] <= step:
            kept.append(line + b"\n")
    return b"".join(kept)


class MetricSinks:
    """Writes one JSON line per (step, run). On resume, lines past the checkpoint are dropped
    first, since the resumed run writes them again."""

    def __init__(self, out: Path, log_to: tuple[str, ...], enabled: bool, resume_after: int) -> None:
        self.enabled = enabled
        self.path = out / LOG_FILE
        self._extra: list[Any] = []
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, _lines_until(self.path, resume_after) if self.path.is_file() else b"")
        self._file = self.path.open("a")
        for name in log_to:
            self._extra.append(_open_sink(name, out))

    def write(self, step: int, tokens: int, run: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, "tokens": tokens, "run": run, **metrics}, sort_keys=True) + "\n")
        self._file.flush()
        for sink in self._extra:
            sink(step, run, metrics)

    def close(self) -> None:
        if self.enabled:
            self._file.close()


def _open_sink(name: str, out: Path) -> Any:
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))

            def to_tensorboard(step: int, run: str, metrics: dict[str, float]) -> None:
                for key, value in metrics.items():
                    writer.add_scalar(f"{run}/{key}", value, step)

            return to_tensorboard
        import wandb

        session = wandb.init(project="traitlens", dir=str(out))

        def to_wandb(step: int, run: str, metrics: dict[str, float]) -> None:
            session.log({f"{run}/{key}": value for key, value in metrics.items()}, step=step)

        return to_wandb
    except ImportError as error:
        raise TraitlensError(f"--log-to {name} needs the {name} package, which is not installed") from error
