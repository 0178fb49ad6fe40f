"""Driving the explorer's page as a person would, for the browser test and for the README's
screenshot (``scripts/explorer_screenshot.py``): the same clicks make both."""

from __future__ import annotations

from typing import Any


def edit_a_patch(page: Any, thumbnail: int, patch_rc: tuple[int, int], grid_hw: tuple[int, int],
                 whole_image: bool = False) -> dict[str, Any]:
    """Open the ``thumbnail``-th image of the data (turning pages as needed), click the patch at ``patch_rc`` (row, column) of the
    ``grid_hw`` grid, zero the strongest latent listed there on that patch (on the whole image
    with ``whole_image``) and apply the edit; returns the latent and the command the page shows."""
    page.wait_for_selector("#grid img")
    per_page = page.locator("#grid img").count()
    for turn in range(thumbnail // per_page):  # the image grid shows one page at a time
        page.locator("#next").click()
        page.wait_for_selector(f"#grid img[data-id='d{(turn + 1) * per_page}']")
    page.locator(f"#grid img[data-id='d{thumbnail}']").click()
    page.wait_for_selector("#predictions tbody tr")
    page.locator("#overlay").scroll_into_view_if_needed()
    box = page.locator("#overlay").bounding_box()
    (row, col), (gh, gw) = patch_rc, grid_hw
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / gw, box["y"] + (row + 0.5) * box["height"] / gh)
    page.wait_for_selector("#latents tbody tr")
    first = page.locator("#latents tbody tr").first
    latent = int(first.get_attribute("data-latent"))
    first.locator("button.add").click()  # the operation defaults to zero
    if whole_image:
        page.locator("input[name=scope][value=image]").check()
    page.locator("#apply").click()
    page.wait_for_selector("#predictions td.after[data-probability]")
    first.hover()  # the latent's map is drawn over the image
    return {"latent": latent, "command": page.locator("#command").inner_text()}


def show_a_heatmap(page: Any, reference: str = "") -> None:
    """Draw the heatmap panel's default method, against ``reference`` when given (Finer-CAM)."""
    if reference:
        page.locator("#cam-reference").select_option(reference)
    page.locator("#cam-show").click()
    page.wait_for_function("document.getElementById('cam').complete && document.getElementById('cam').naturalWidth > 0")
