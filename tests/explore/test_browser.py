"""The explorer in a real browser: pick an image, click a patch, see the latents there, zero one,
and read the same prediction ``traitlens steer`` computes for that edit. Chromium from ``make test``.
The clicks are :mod:`tests.explore.drive`'s, which also make the README's screenshot."""

from __future__ import annotations

import csv
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.explore.conftest import ExploreInputs
from tests.explore.drive import edit_a_patch, show_a_heatmap
from traitlens.cli import main
from traitlens.explore import Explorer

PATCH_ROW, PATCH_COL = 2, 3


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    with chromium() as browser:
        opened = browser.new_page(viewport={"width": 1400, "height": 900})
        opened.goto(server)
        yield opened


def test_a_patch_edit_in_the_page_is_the_edit_steer_computes(page: Any, explorer: Explorer, explore_inputs: ExploreInputs,
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gh, gw = explorer.layout.grid_hw
    edited = edit_a_patch(page, 4, (PATCH_ROW, PATCH_COL), (gh, gw))
    latent, command = edited["latent"], edited["command"]
    assert page.locator("#selection-size").inner_text() == "1 patch"
    assert page.locator("#edits li").all_inner_texts() == [f"{latent}=zero"]

    # what steer writes for the command the page shows
    argv = shlex.split(command)
    out = tmp_path / "steer"
    assert argv[:2] == ["traitlens", "steer"] and argv[-2:] == ["--out", "steer-out"]
    assert main([*argv[1:-2], "--out", str(out)]) == 0
    capsys.readouterr()
    with (out / "predictions.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    patch = PATCH_ROW * gw + PATCH_COL
    assert f"--edit={latent}=zero" in argv and argv[argv.index("--patches") + 1] == str(patch)
    assert row["source"] == explorer.images(4, 1)["images"][0]["source"].split("/")[-1]
    shown_before = page.locator("#predictions tbody tr").first.get_attribute("data-class")
    assert shown_before == row["before"]
    after_cell = page.locator(f"#predictions tbody tr[data-class='{row['before']}'] td.after")
    assert float(after_cell.get_attribute("data-probability")) == pytest.approx(float(row["p_after"]), abs=5e-7)
    assert float(row["p_after"]) != pytest.approx(float(row["p_before"]), abs=1e-9), "zeroing a latent that fires moved nothing"

    show_a_heatmap(page)
    assert page.locator("#cam").get_attribute("alt") == "grad-cam of the predicted class"


def test_a_bad_upload_is_said_in_the_page(page: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.locator("#upload").set_input_files(str(bad))
    page.wait_for_function("document.getElementById('upload-error').textContent.length > 0")
    assert "not an image this server reads" in page.locator("#upload-error").inner_text()
    page.locator("#grid img").first.click()  # and the page goes on working
    page.wait_for_selector("#predictions tbody tr")
