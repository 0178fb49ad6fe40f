"""The HTML of the features report: an index of latents and one page per latent.

Pages are self-contained (inline CSS and vanilla JS, no external resources) and link to each other
and to their images by relative paths, so the report works opened from disk. Every piece of text
that comes from data goes through :func:`html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from traitlens.html_pages import number_text, page

# Top images narrower than this are shown enlarged by a whole factor.
DISPLAY_SIDE = 192

_INDEX_SCRIPT = """
(function () {
  var table = document.getElementById("latents");
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById("filter");
  var minFrequency = document.getElementById("min-frequency");
  var shown = document.getElementById("shown");

  // a cell's sort key: its number (data-v; empty = missing) or its lower-cased text
  function key(row, column) {
    var cell = row.cells[column];
    var raw = cell.getAttribute("data-v");
    if (raw === null) { return cell.textContent.toLowerCase(); }
    return raw === "" ? null : parseFloat(raw);
  }

  headers.forEach(function (header, column) {
    if (!header.classList.contains("sortable")) { return; }
    header.addEventListener("click", function () {
      var ascending = header.getAttribute("aria-sort") !== "ascending";
      headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var sign = ascending ? 1 : -1;
      rows.sort(function (a, b) {
        var x = key(a, column), y = key(b, column);
        if (x === null || y === null) {  // missing values go last in both directions
          return (x === null ? 1 : 0) - (y === null ? 1 : 0);
        }
        if (x < y) { return -sign; }
        if (x > y) { return sign; }
        return key(a, 0) - key(b, 0);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });

  function applyFilter() {
    var words = filter.value.toLowerCase().trim();
    var least = parseFloat(minFrequency.value);
    var count = 0;
    rows.forEach(function (row) {
      var frequency = parseFloat(row.getAttribute("data-frequency")) * 100;
      var visible = (words === "" || row.getAttribute("data-search").indexOf(words) >= 0) &&
                    (isNaN(least) || frequency >= least);
      row.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = String(count);
  }
  filter.addEventListener("input", applyFilter);
  minFrequency.addEventListener("input", applyFilter);
})();
"""


def _percent(value: float) -> str:
    return f"{100 * value:.3g}%"


def _sort_value(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def latent_file(latent: int) -> str:
    """A latent page's path relative to the report root."""
    return f"latents/{latent}.html"


def index_page(rows: Sequence[dict[str, Any]], heading: str, meta_lines: Sequence[str]) -> str:
    """The index: one row per latent (``summary_rows`` entries), sortable by any column and
    filtered by text (latent, class, label) and minimum frequency."""
    columns = [("latent", True), ("frequency", True), ("mean", True), ("max", True), ("top class", False),
               ("class AP", True), ("best patch label", False), ("label AP", True)]
    head = "".join(f'<th scope="col" class="sortable{" num" if numeric else ""}">{escape(name)}</th>'
                   for name, numeric in columns)
    body_rows = []
    for row in rows:
        search = " ".join(str(part) for part in (row["latent"], row["top_class"] or "", row["top_label"] or "")).lower()
        cells = [
            f'<td class="num" data-v="{row["latent"]}"><a href="{escape(latent_file(row["latent"]))}">{row["latent"]}</a></td>',
            f'<td class="num" data-v="{_sort_value(row["frequency"])}">{_percent(row["frequency"])}</td>',
            f'<td class="num" data-v="{_sort_value(row["mean"])}">{number_text(row["mean"])}</td>',
            f'<td class="num" data-v="{_sort_value(row["max"])}">{number_text(row["max"])}</td>',
            f"<td>{escape(row['top_class'] or 'n/a')}</td>",
            f'<td class="num" data-v="{_sort_value(row["class_ap"])}">{number_text(row["class_ap"])}</td>',
            f"<td>{escape(row['top_label'] or 'n/a')}</td>",
            f'<td class="num" data-v="{_sort_value(row["label_ap"])}">{number_text(row["label_ap"])}</td>',
        ]
        body_rows.append(f'<tr data-search="{escape(search)}" data-frequency="{_sort_value(row["frequency"])}">{"".join(cells)}</tr>')
    meta = "".join(f'<p class="meta">{escape(line)}</p>' for line in meta_lines)
    body = (
        f"<h1>{escape(heading)}</h1>\n{meta}\n"
        '<div class="controls">'
        '<label>filter <input id="filter" type="search" placeholder="latent, class or label"></label>'
        '<label>min frequency (%) <input id="min-frequency" type="number" min="0" step="any"></label>'
        f'<span>showing <span id="shown">{len(rows)}</span> of {len(rows)} latents</span></div>\n'
        f'<table id="latents">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body_rows) + "\n</tbody>\n</table>"
    )
    return page(heading, body, _INDEX_SCRIPT)


@dataclass(frozen=True)
class Figure:
    """One top image on a latent page: the image file (relative to the report root; None when
    it could not be drawn), its (width, height), the heat layer stretched over it (an image URL,
    None for none), a caption and a tooltip."""

    path: str | None
    size_wh: tuple[int, int] | None
    heat: str | None
    caption: str
    title: str


def _shown_size(size_wh: tuple[int, int]) -> tuple[int, int]:
    """Small model inputs are shown enlarged, to about DISPLAY_SIDE pixels on the longer side."""
    width, height = size_wh
    scale = max(1, DISPLAY_SIDE // max(width, height))
    return width * scale, height * scale


def latent_page(row: dict[str, Any], count: int, figures: Sequence[Figure], image_note: str | None, label_definition: str | None,
                classes: Sequence[tuple[str, float, float, float]], labels: Sequence[tuple[str, float, float]],
                neighbours: tuple[int | None, int | None]) -> str:
    """One latent's page: statistics, top images, class and patch-label tables, navigation.

    ``classes`` holds (name, mean image activation, AP, chance AP) and ``labels`` (name, AP,
    chance AP), best first; ``label_definition`` says what the label APs are over (or why there
    are none).
    """
    latent = row["latent"]
    previous, following = neighbours
    nav = ['<a href="../index.html">&larr; all latents</a>']
    if previous is not None:
        nav.append(f'<a href="{previous}.html">&lsaquo; latent {previous}</a>')
    if following is not None:
        nav.append(f'<a href="{following}.html">latent {following} &rsaquo;</a>')
    stats = [("frequency", f"{_percent(row['frequency'])} of tokens ({count:,} tokens)"),
             ("mean activation (when firing)", number_text(row["mean"])), ("max activation", number_text(row["max"])),
             ("top class", f"{row['top_class'] or 'n/a'} (AP {number_text(row['class_ap'])})"),
             ("best patch label", f"{row['top_label'] or 'n/a'} (AP {number_text(row['label_ap'])})")]
    parts = [f"<nav>{' '.join(nav)}</nav>", f"<h1>Latent {latent}</h1>",
             '<dl class="stats">' + "".join(f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>" for name, value in stats) + "</dl>",
             "<h2>Top images</h2>"]
    if image_note:
        parts.append(f'<p class="note">{escape(image_note)}</p>')
    elif any(figure.heat for figure in figures):
        parts.append('<p class="meta">Each image as the model saw it, with the latent\'s activation on each patch '
                     "(divided by its max activation) drawn over it; hover an image to hide the heatmap.</p>")
    cells = []
    for figure in figures:
        view = ""
        if figure.path is not None and figure.size_wh is not None:
            width, height = _shown_size(figure.size_wh)
            heat = f'<img class="heat" src="{escape(figure.heat)}" alt="">' if figure.heat else ""
            view = (f'<div class="view" style="width:{width}px;height:{height}px">'
                    f'<img src="../{escape(figure.path)}" alt="{escape(figure.title)}" title="{escape(figure.title)}">{heat}</div>')
        cells.append(f"<figure>{view}<figcaption>{escape(figure.caption)}</figcaption></figure>")
    parts.append(f'<div class="images">{"".join(cells)}</div>' if cells else '<p class="note">The latent fires on no image.</p>')
    if classes:
        parts.append("<h2>Top classes</h2>")
        table_rows = "".join(f'<tr><td>{escape(name)}</td><td class="num">{number_text(mean)}</td><td class="num">{number_text(ap)}</td>'
                             f'<td class="num">{number_text(chance)}</td></tr>' for name, mean, ap, chance in classes)
        parts.append('<table><thead><tr><th>class</th><th class="num">mean image activation</th>'
                     f'<th class="num">AP</th><th class="num">chance</th></tr></thead><tbody>{table_rows}</tbody></table>')
    if labels or label_definition:
        parts.append("<h2>Patch labels</h2>")
    if label_definition:
        parts.append(f'<p class="meta">{escape(label_definition)}</p>')
    if labels:
        table_rows = "".join(f'<tr><td>{escape(name)}</td><td class="num">{number_text(ap)}</td>'
                             f'<td class="num">{number_text(chance)}</td></tr>'
                             for name, ap, chance in labels)
        parts.append('<table><thead><tr><th>label</th><th class="num">AP</th><th class="num">chance</th></tr></thead>'
                     f"<tbody>{table_rows}</tbody></table>")
    return page(f"Latent {latent}", "\n".join(parts))
