"""``traitlens specimens score finetune``: the fine-tuning methods side by side, at a few images per
class, on some of the model's classes, with forgetting of the others and recovery by calibration.

The protocol of "Fine-tuning is fine, if calibrated" at our scale, with the methods of the PETL
study: every method of :mod:`traitlens.finetune.methods` fine-tunes ``--model`` on ``--classes`` of
``--data`` at each ``--n-per-class``, with the same recipe and seed; ``calibrate --method gap``
learns gamma from the very images each fine-tuning used; ``--test-data`` (images of every class)
scores the base model, the fine-tuned one and the calibrated one on the fine-tuned and on the
absent classes. Pseudo cross-validation (``pcv``), which fine-tunes again per fold, runs at
``--pcv-n-per-class`` only. Everything lands in ``--out/<method>-<n>/`` and resumes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlens.atomic import atomic_write_json
from traitlens.checks import check_int
from traitlens.finetune.calibration import CalibrateConfig, calibrate
from traitlens.finetune.methods import finetune_methods
from traitlens.finetune.training import FinetuneConfig, finetune
from traitlens.specimens.benchmark import ScoringError
from traitlens.tables import markdown_table, write_text

SCORE = "finetune"
COLUMNS = ["method", "n_per_class", "trained_parameters", "finetuned_base", "finetuned_after", "finetuned_calibrated",
           "absent_base", "absent_after", "absent_calibrated", "recovered", "ausuc", "finetuned_pcv", "absent_pcv"]


@dataclass(frozen=True)
class FinetuneComparisonConfig:
    model: str
    data: Path
    test_data: Path
    out: Path
    classes: tuple[str, ...]
    n_per_class: tuple[int, ...] = (4, 16, 64)
    methods: tuple[str, ...] | None = None
    """Default: every registered method."""
    pcv_n_per_class: int | None = 16
    weights: Path | None = None
    pretrained: bool = True
    epochs: int = 10
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for count in self.n_per_class:
            check_int(count, "--n-per-class", ScoringError)
        check_int(self.epochs, "--epochs", ScoringError)
        unknown = [name for name in self.methods or () if name not in finetune_methods()]
        if unknown:
            raise ScoringError(f"unknown fine-tuning methods {', '.join(unknown)}; choose among {', '.join(finetune_methods())}")
        if self.pcv_n_per_class is not None and self.pcv_n_per_class not in self.n_per_class:
            raise ScoringError(f"--pcv-n-per-class {self.pcv_n_per_class} is not one of --n-per-class")


def _row(method: str, n_per_class: int, saved: dict[str, Any], gap: dict[str, Any], pcv: dict[str, Any] | None) -> dict[str, Any]:
    metrics = gap["metrics"]
    base = metrics.get("base") or {}
    return {"method": method, "n_per_class": n_per_class, "trained_parameters": saved["metrics"]["n_trained_parameters"],
            "train_seconds": saved["metrics"]["train_seconds_this_run"],
            "finetuned_base": base.get("finetuned"), "finetuned_after": metrics["before"]["finetuned"],
            "finetuned_calibrated": metrics["after"]["finetuned"], "absent_base": base.get("absent"),
            "absent_after": metrics["before"]["absent"], "absent_calibrated": metrics["after"]["absent"],
            "recovered": metrics["recovered"], "ausuc": gap["ausuc"], "gamma": gap["gamma"],
            "finetuned_pcv": None if pcv is None else pcv["metrics"]["after"]["finetuned"],
            "absent_pcv": None if pcv is None else pcv["metrics"]["after"]["absent"],
            "recovered_pcv": None if pcv is None else pcv["metrics"]["recovered"],
            "gamma_pcv": None if pcv is None else pcv["gamma"]}


def score_finetune(config: FinetuneComparisonConfig, show_progress: bool = False) -> dict[str, Any]:
    """Fine-tune, calibrate and score every method at every size into ``config.out``."""
    methods: Sequence[str] = config.methods or list(finetune_methods())
    rows = []
    for n_per_class in config.n_per_class:
        for method in methods:
            folder = config.out / f"{method}-{n_per_class}"
            saved = finetune(FinetuneConfig(model=config.model, data=config.data, method=method, out=folder, classes=config.classes,
                                            n_per_class=n_per_class, epochs=config.epochs, seed=config.seed, device=config.device,
                                            weights=config.weights, pretrained=config.pretrained),
                             show_progress)
            spec = f"traitlens:{folder}"
            gap = calibrate(CalibrateConfig(model=spec, data=config.test_data, method="gap", fit_data=config.data,
                                            out=config.out / f"{method}-{n_per_class}-gap", device=config.device, overwrite=True),
                            show_progress)
            pcv = None
            if n_per_class == config.pcv_n_per_class:
                pcv = calibrate(CalibrateConfig(model=spec, data=config.test_data, method="pcv", fit_data=config.data,
                                                out=config.out / f"{method}-{n_per_class}-pcv", device=config.device,
                                                overwrite=True), show_progress)
            rows.append(_row(method, n_per_class, saved, gap, pcv))
    result = {"model": config.model, "data": str(config.data), "test_data": str(config.test_data), "classes": list(config.classes),
              "epochs": config.epochs, "seed": config.seed, "rows": rows}
    atomic_write_json(config.out / f"{SCORE}.json", json.loads(json.dumps(result)))
    write_text(config.out / f"{SCORE}.md", "\n".join([
        f"**Fine-tuning {config.model} on {len(config.classes)} classes, the others absent** (accuracy on {config.test_data}, "
        "argmax over all classes: base model, after fine-tuning, after calibration by the average logit gap; recovered: "
        "the share of the absent-class accuracy lost by fine-tuning that calibration brings back; pcv: accuracy "
        "after calibration by pseudo cross-validation instead)", "", markdown_table(rows, COLUMNS), ""]))
    return result
