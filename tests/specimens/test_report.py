"""``specimens report``: one model discovered, localized and tested against its twin reliance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.html_pages import local_targets, parse_page
from traitlens.cli import main
from traitlens.specimens.report import ReportConfig, run_report


def test_report_runs_every_step_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ReportConfig(model="traitlens:specimens-vit", out=tmp_path / "report", n_images=32, sae_epochs=2, n_random=1,
                          trait_latents=3, methods=("grad-cam",))
    result = run_report(config)
    rows = {row["method"]: row for row in result["localization"]["rows"]}
    assert rows["oracle (ceiling)"]["oracle_spearman"] == pytest.approx(1.0) and rows["chance"]["oracle_spearman"] == 0.0
    assert rows["oracle (ceiling)"]["patch_ap"] > rows["chance"]["patch_ap"]
    assert set(result["localization"]["reference_agreement"]) == {"closest", "confusion"}
    assert result["sae"]["layer"] == "blocks.2" and 0 < result["sae"]["explained_variance"] <= 1
    suppression = result["suppression"]["rows"]
    assert suppression[-1]["pair"] == "all" and 0 <= suppression[-1]["reliance"] <= 1
    assert set(result["suppression"]["latents"]) == {"mask AP", "twin difference"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    for heading in ("## Twin reliance", "## Localization", "## Discovery", "## Suppression"):
        assert heading in markdown
    assert json.loads((tmp_path / "report" / "report.json").read_text())["model"] == "traitlens:specimens-vit"
    # the same tables as a page, with pictures: per pair trait | twin | Grad-CAM | Finer-CAM | oracle, and suppression
    page = parse_page(tmp_path / "report" / "report.html")
    assert page.n_tables == 4 and all(target.is_file() for target in local_targets(tmp_path / "report" / "report.html", page))
    shown = {Path(image).name.rsplit("-", 1)[-1] for image in page.images if "localization" in image}
    assert shown == {"mask.png", "twin.png", "gradcam.png", "finer.png", "oracle.png"}
    assert any("suppression" in image for image in page.images)
    # the folder is the report's own: a second run resumes it; another command's folder is refused
    assert run_report(config)["accuracy"] == result["accuracy"]
    capsys.readouterr()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["specimens", "report", "--model", "traitlens:specimens-vit", "--out", str(tmp_path / "mine")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert main(["specimens", "report", "--model", "traitlens:specimens-vit", "--out", str(tmp_path / "x"), "--n-images", "8"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
