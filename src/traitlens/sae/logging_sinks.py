"""Where training metrics go: a JSONL file always; TensorBoard or W&B only when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlens.errors import TraitlensError

LOG_FILE = "train_log.jsonl"
SINKS = ("tensorboard", "wandb")


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
        kept = []
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_after]
        self.path.write_text("".join(line + "\n" for line in kept))
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
    if name not in SINKS:
        raise TraitlensError(f"unknown metrics sink {name!r}; choose from {', '.join(SINKS)}")
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
