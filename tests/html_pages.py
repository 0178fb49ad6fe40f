"""Reading the HTML pages traitlens writes: well-formedness, links and images."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

VOID_TAGS = {"meta", "img", "input", "br", "hr", "link"}


class _Page(HTMLParser):
    """Checks that every element is closed in order, and collects links and images."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.rows: list[dict[str, str | None]] = []
        self.n_tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag not in VOID_TAGS:
            self.open.append(tag)
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
        if tag == "img":
            self.images.append(str(values["src"]))
        if tag == "table":
            self.n_tables += 1
        if tag == "tr" and "data-search" in values:
            self.rows.append(values)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    assert page.open == [], f"{path} leaves {page.open} open"
    return page


def local_targets(page_path: Path, page: _Page) -> list[Path]:
    return [(page_path.parent / target).resolve() for target in page.links + page.images if not target.startswith("data:")]
