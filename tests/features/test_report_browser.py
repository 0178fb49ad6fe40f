"""The report in a real browser, opened from disk: sorting by a header, filtering, and a latent
page whose images all load. Chromium comes from ``make test`` (apt), driven by playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import chromium
from traitlens.features import LatentFeatures
from traitlens.features.report import write_report

VISIBLE_ROWS = "#latents tbody tr:not([hidden])"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def report(features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(features_dir, tmp_path_factory.mktemp("browser") / "report")


def _column(page: Any, index: int) -> list[str | None]:
    return page.eval_on_selector_all(VISIBLE_ROWS, f"rows => rows.map(row => row.cells[{index}].getAttribute('data-v'))")


def test_headers_sort_and_filters_hide_rows(browser: Any, report: Path, features_dir: Path) -> None:
    features = LatentFeatures(features_dir)
    page = browser.new_page()
    page.goto(report.as_uri())
    latents = [int(value) for value in _column(page, 0) if value is not None]
    assert latents == [int(latent) for latent in features.alive]

    frequency_header = page.locator("#latents th", has_text="frequency")
    frequency_header.click()
    ascending = [float(value) for value in _column(page, 1) if value is not None]
    assert frequency_header.get_attribute("aria-sort") == "ascending"
    assert ascending == sorted(features.frequency[features.alive].tolist())
    frequency_header.click()
    descending = [float(value) for value in _column(page, 1) if value is not None]
    assert descending == sorted(ascending, reverse=True) and descending != ascending
    by_latent = [int(value) for value in _column(page, 0) if value is not None]
    assert by_latent != latents  # the rows really moved

    rows = features.summary_rows()
    some_class = rows[int(features.alive[0])]["top_class"]
    expected = sum(1 for latent in features.alive if rows[latent]["top_class"] == some_class)
    page.fill("#filter", some_class)
    shown = page.eval_on_selector_all(VISIBLE_ROWS, "rows => rows.map(row => row.cells[4].textContent)")
    assert shown == [some_class] * expected and 0 < expected < len(features.alive)
    assert page.text_content("#shown") == str(expected)

    page.fill("#filter", "")
    threshold = float(np.median(features.frequency[features.alive]))
    page.fill("#min-frequency", repr(100 * threshold))
    kept = [float(value) for value in _column(page, 1) if value is not None]
    assert sorted(kept) == sorted(f for f in features.frequency[features.alive].tolist() if 100 * f >= 100 * threshold)
    assert 0 < len(kept) < len(features.alive)
    page.close()


def test_a_latent_page_loads_all_its_images(browser: Any, report: Path) -> None:
    page = browser.new_page()
    page.goto(report.as_uri())
    link = page.locator(f"{VISIBLE_ROWS} a").first
    latent = link.text_content()
    link.click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/latents/{latent}.html")
    loaded = page.evaluate("Array.from(document.images).map(image => image.complete && image.naturalWidth > 0)")
    assert loaded and all(loaded), loaded
    assert page.locator("h1").text_content() == f"Latent {latent}"
    page.locator("a", has_text="all latents").click()
    page.wait_for_load_state("load")
    assert page.url == report.as_uri()
    page.close()
