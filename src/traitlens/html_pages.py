"""Self-contained HTML pages (inline CSS, no external resources) that open from disk: the house
style shared by the features report, the demo report and the explain gallery. Escape every piece
of data text (:func:`html.escape`) before putting it in a page."""

from __future__ import annotations

import math
from html import escape

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin-top: 1.5em; }
.meta, .note { color: #555; } .note { font-style: italic; }
.controls { display: flex; gap: 1.5em; align-items: center; margin: 1em 0; flex-wrap: wrap; }
.controls input { font: inherit; padding: 0.2em 0.4em; }
table { border-collapse: collapse; } th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th.sortable { cursor: pointer; user-select: none; white-space: nowrap; }
th.sortable::after { content: " \\2195"; color: #aaa; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: #222; }
th[aria-sort="descending"]::after { content: " \\25BC"; color: #222; }
tbody tr:hover { background: #f8f8ff; }
dl.stats { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.stats dt { color: #555; } dl.stats dd { margin: 0; }
.images { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; }
.view { position: relative; border: 1px solid #ccc; }
.view img { position: absolute; left: 0; top: 0; width: 100%; height: 100%; image-rendering: auto; }
.view img.heat { pointer-events: none; transition: opacity 0.15s; image-rendering: pixelated; }
.view:hover img.heat { opacity: 0; }
figcaption { font-size: 0.85em; color: #444; max-width: 12em; }
.figrow { display: flex; gap: 0.5em; align-items: flex-end; flex-wrap: wrap; margin: 0.5em 0; }
.figlabel { width: 11em; font-size: 0.9em; color: #444; align-self: center; overflow-wrap: anywhere; }
svg.chart { display: block; margin: 0.8em 0; max-width: 100%; height: auto; }
nav a { margin-right: 1em; }
"""

def page(title: str, body: str, script: str = "") -> str:
    """A whole HTML page with the report's inline style; ``body`` and ``script`` are inserted as
    they are (escape data text before), ``title`` is escaped."""
    script_tag = f"<script>{script}</script>\n" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n{script_tag}</body>\n</html>\n")


def number_text(value: float | None, digits: int = 3) -> str:
    """A number as the report shows it; None and NaN as ``n/a``."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>."""
    parts = escape(text).split("`")
    return "".join(f"<code>{part}</code>" if index % 2 else part for index, part in enumerate(parts))


def markdown_body(text: str) -> str:
    """The HTML of the Markdown traitlens writes in its reports: ``#``/``##``/``###`` headings,
    paragraphs and pipe tables (every piece of text escaped)."""
    html: list[str] = []
    table: list[list[str]] = []

    def close_table() -> None:
        if table:
            head, *rows = table
            html.append("<table><thead><tr>" + "".join(f"<th>{_inline(cell)}</th>" for cell in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in rows)
                        + "</tbody></table>")
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if not all(set(cell) <= set("-: ") and cell for cell in cells):  # not the separator row
                table.append(cells)
            continue
        close_table()
        level = len(stripped) - len(stripped.lstrip("#"))
        if 1 <= level <= 3 and stripped[level:level + 1] == " ":
            html.append(f"<h{level}>{_inline(stripped[level + 1:])}</h{level}>")
        elif stripped:
            html.append(f"<p>{_inline(stripped)}</p>")
    close_table()
    return "\n".join(html)
