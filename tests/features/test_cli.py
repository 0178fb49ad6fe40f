"""``traitlens features`` from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import run_cli
from traitlens.cli import main


def test_features_command_writes_features_and_a_report(specimens_store: Path, relu_sae: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "features"
    code = main(["features", "--sae", str(relu_sae), "--acts", str(specimens_store), "--out", str(out),
                 "--top-k", "4", "--report-latents", "5", "--batch-size", "100"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "alive" in printed and "dead" in printed and str(out / "report" / "index.html") in printed
    assert (out / "features.json").is_file() and (out / "report" / "index.html").is_file()
    assert len(list((out / "report" / "latents").glob("*.html"))) == 5


def test_no_report_and_bad_input(specimens_store: Path, relu_sae: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "features"
    assert main(["features", "--sae", str(relu_sae), "--acts", str(specimens_store), "--out", str(out), "--no-report"]) == 0
    assert not (out / "report").exists()
    capsys.readouterr()
    assert main(["features", "--sae", str(relu_sae), "--acts", str(specimens_store), "--out", str(tmp_path / "x"), "--layer", "9"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "layer '9' is not in the store" in error


@pytest.mark.parametrize("case", ["out_is_a_file", "out_under_a_file", "report_latents_0", "top_k_0", "min_coverage_2"])
def test_bad_settings_are_refused_before_any_work(case: str, specimens_store: Path, relu_sae: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from traitlens.features import analysis

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the SAE was loaded before the settings were checked")

    monkeypatch.setattr(analysis, "load_sae_with_config", no_work)
    (tmp_path / "file").write_text("mine")
    out, extra, message = {
        "out_is_a_file": (tmp_path / "file", [], "is a file, not a folder"),
        "out_under_a_file": (tmp_path / "file" / "features", [], "cannot be created"),
        "report_latents_0": (tmp_path / "out", ["--report-latents", "0"], "--report-latents: an integer of at least 1 expected"),
        "top_k_0": (tmp_path / "out", ["--top-k", "0"], "--top-k: an integer of at least 1 expected"),
        "min_coverage_2": (tmp_path / "out", ["--min-coverage", "2"], "min_coverage must be a number in (0, 1], got 2.0"),
    }[case]
    code, _, error = run_cli(["features", "--sae", str(relu_sae), "--acts", str(specimens_store), "--out", str(out), *extra])
    assert code == 2
    assert "error: " in error and error.count("\n") == 1 and message in error, error
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "out").exists()
