"""``index.html`` of an explain folder: per image the image and its map side by side, its target
and references with their scores, filtered by text; opened from disk like every report.

Each row shows one small JPEG, ``gallery/<stem>.jpg`` (the image beside its overlay, :data:`SIDE`
pixels high), written with the image's map, so a page of a few hundred images stays light; images
load lazily as the page scrolls.
"""

from __future__ import annotations

from html import escape
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from traitlens.atomic import atomic_save_jpeg, atomic_write_bytes
from traitlens.html_pages import number_text, page

GALLERY = "gallery"
INDEX = "index.html"
SIDE = 128

_FILTER_SCRIPT = """
(function () {
  var filter = document.getElementById("filter"), shown = document.getElementById("shown");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#maps tbody tr"));
  filter.addEventListener("input", function () {
    var words = filter.value.toLowerCase().trim(), count = 0;
    rows.forEach(function (row) {
      row.hidden = words !== "" && row.getAttribute("data-search").indexOf(words) < 0;
      if (!row.hidden) { count += 1; }
    });
    shown.textContent = String(count);
  });
})();
"""


def thumbnail_path(stem: PurePosixPath) -> str:
    """Where an image's gallery picture goes, relative to the explain folder."""
    return f"{GALLERY}/{stem}.jpg"


def write_thumbnail(out: Path, stem: PurePosixPath, image: Image.Image, drawn: Image.Image) -> None:
    """The image and its overlay side by side, :data:`SIDE` pixels high."""
    width = max(1, round(image.width * SIDE / image.height))
    pair = Image.new("RGB", (2 * width + 4, SIDE), "white")
    pair.paste(image.convert("RGB").resize((width, SIDE)), (0, 0))
    pair.paste(drawn.convert("RGB").resize((width, SIDE)), (width + 4, 0))
    atomic_save_jpeg(out / thumbnail_path(stem), pair)


def _classes(names: list[str | None], indices: list[int], scores: list[float]) -> str:
    return ", ".join(f"{escape(name if name is not None else str(index))} ({number_text(score)})"
                     for name, index, score in zip(names, indices, scores, strict=True))


def write_gallery(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``out/index.html`` for the summary of an explain run; returns its path."""
    rows = []
    for record in summary["images"]:
        stem = PurePosixPath(record["map"]).with_suffix("")
        target = record["target"] if record["target"] is not None else str(record["target_index"])
        references = _classes(record["references"], record["reference_indices"], record["reference_scores"])
        search = " ".join([record["source"], target, *(str(name) for name in record["references"])]).lower()
        rows.append(f'<tr data-search="{escape(search)}"><td><a href="{escape(record["overlay"])}">'
                    f'<img loading="lazy" height="{SIDE}" src="{escape(thumbnail_path(stem))}" alt="{escape(record["source"])}">'
                    f"</a></td><td>{escape(record['source'])}</td><td>{escape(target)} ({number_text(record['target_score'])})</td>"
                    f"<td>{references or '—'}</td></tr>")
    config = summary["config"]
    contrast = f", Finer-CAM against the references (γ = {config['gamma']:g})" if summary["images"] and \
        summary["images"][0]["references"] else ""
    body = (f"<h1>{escape(config['method'])} maps</h1>\n"
            f'<p class="meta">{escape(summary["model"]["spec"])}, layer {escape(summary["layer"])}{escape(contrast)}; '
            f"{len(rows)} images from {escape(config['data'])}. Each row: the image and its map (click for the full "
            "overlay), the explained class and the references with the head's scores.</p>\n"
            '<div class="controls"><label>filter <input id="filter" type="search" placeholder="image or class"></label>'
            f'<span><span id="shown">{len(rows)}</span> shown</span></div>\n'
            '<table id="maps"><thead><tr><th>image | map</th><th>image</th><th>target (score)</th>'
            f"<th>references (scores)</th></tr></thead><tbody>\n{chr(10).join(rows)}\n</tbody></table>")
    path = out / INDEX
    atomic_write_bytes(path, page(f"traitlens explain: {config['method']}", body, _FILTER_SCRIPT).encode())
    return path
