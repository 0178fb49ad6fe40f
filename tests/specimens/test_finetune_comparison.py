"""``traitlens specimens score finetune``: two methods at two sizes on a random-init ViT, with
calibration and pseudo cross-validation, in one table."""

from __future__ import annotations

import json
from pathlib import Path

from tests.finetune.conftest import MODEL
from tests.fuzz.harness import assert_refused, run_cli


def test_methods_and_sizes_are_scored_side_by_side(colours: Path, tmp_path: Path) -> None:
    argv = ["specimens", "score", "finetune", "--model", MODEL, "--random-init", "--data", str(colours), "--test-data", str(colours),
            "--classes", "blue,cyan,green,red", "--n-per-class", "2,4", "--methods", "linear,adapter", "--pcv-n-per-class", "4",
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "scores")]
    code, out, err = run_cli(argv)
    assert code == 0, err
    rows = json.loads((tmp_path / "scores" / "finetune.json").read_text())["rows"]
    assert [(row["method"], row["n_per_class"]) for row in rows] == [("linear", 2), ("adapter", 2), ("linear", 4), ("adapter", 4)]
    assert all((row["absent_pcv"] is None) == (row["n_per_class"] == 2) for row in rows)
    assert all(0 <= row["absent_after"] <= 1 and 0 <= row["ausuc"] <= 1 for row in rows)
    assert "| adapter |" in out
    assert_refused([*argv[:-1], str(tmp_path / "never"), "--pcv-n-per-class", "8"], colours, says="not one of --n-per-class")
