"""The README's picture of ``traitlens explore``: the demo's model, SAE, features and images in the
explorer, driven by the browser test's own clicks (``tests/explore/drive.py``) in Chromium, saved
as a small PNG (``make docs`` runs it).

    scripts/explorer_screenshot.py [--demo runs/demo] [--out docs/images/explorer.png]

A demo folder without its report is made (or finished) first with ``traitlens demo``.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser helpers of the test suite

from tests.browser import chromium  # noqa: E402
from tests.explore.drive import edit_a_patch, show_a_heatmap  # noqa: E402

from traitlens.atomic import atomic_write_bytes  # noqa: E402
from traitlens.demo import DEMO_MODEL, DemoConfig  # noqa: E402
from traitlens.explore import ExploreConfig, Explorer  # noqa: E402
from traitlens.explore.app import serving  # noqa: E402
from traitlens.specimens.catalog import LOOKALIKES  # noqa: E402

SPECIES = LOOKALIKES[0].b
"""The species shown: the crested one of the first look-alike pair, edited on its crest's row."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "explorer.png")
    args = parser.parse_args(argv)
    demo = DemoConfig(out=args.demo)
    if not demo.report.is_file():
        subprocess.run([str(Path(sys.executable).with_name("traitlens")), "demo", "--out", str(args.demo)], check=True)
    explorer = Explorer(ExploreConfig(model=DEMO_MODEL, sae=demo.sae, features=demo.features, data=demo.data, device="cpu"))
    assert explorer.source is not None
    thumbnail = next(index for index, record in enumerate(explorer.source.records) if record.label == SPECIES)
    gh, gw = explorer.layout.grid_hw
    with serving(explorer) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 820})
        page.goto(url)
        edit_a_patch(page, thumbnail, (1, gw // 2), (gh, gw))
        show_a_heatmap(page, reference=LOOKALIKES[0].a)
        page.evaluate("window.scrollTo(0, 0)")
        shot = Image.open(io.BytesIO(page.screenshot()))
    buffer = io.BytesIO()
    shot.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"wrote {args.out} ({len(buffer.getvalue()) >> 10} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
