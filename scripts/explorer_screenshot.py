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

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser helpers of the test suite

from tests.browser import chromium  # noqa: E402
from tests.explore.drive import edit_a_patch, show_a_heatmap  # noqa: E402

from traitlens.atomic import atomic_write_bytes  # noqa: E402
from traitlens.demo import DEMO_MODEL, DemoConfig  # noqa: E402
from traitlens.explore import ExploreConfig, Explorer  # noqa: E402
from traitlens.explore.app import serving  # noqa: E402
from traitlens.specimens.benchmark import read_benchmark  # noqa: E402
from traitlens.specimens.catalog import LOOKALIKES  # noqa: E402
from traitlens.specimens.patch_scores import pool_to_grid  # noqa: E402

SPECIES = LOOKALIKES[0].b
"""The species shown: the crested one of the first look-alike pair, edited on its crest's row."""


def _trait_patch(explorer: Explorer, index: int) -> tuple[int, int]:
    """The patch (row, column) that shows most of the pair's trait on image ``index``."""
    assert explorer.source is not None
    benchmark = read_benchmark(explorer.source.root)
    mask_hw = benchmark.trait_masks(benchmark.resolve(explorer.source.records[index].source))[
        list(benchmark.trait_labels).index(LOOKALIKES[0].trait)]
    shown_hw = explorer.backbone.preprocess.mask(mask_hw.astype(np.int64)) > 0
    coverage_gg = pool_to_grid(shown_hw[None].astype(np.float32), explorer.layout.grid_hw)[0]
    row, col = divmod(int(coverage_gg.argmax()), explorer.layout.grid_hw[1])
    return row, col


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the demo's folder (default: runs/demo)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "explorer.png")
    args = parser.parse_args(argv)
    demo = DemoConfig(out=args.demo)
    if not demo.report.is_file():
        subprocess.run([str(Path(sys.executable).with_name("traitlens")), "demo", "--out", str(args.demo)], check=True)
    explorer = Explorer(ExploreConfig(model=DEMO_MODEL, sae=demo.sae, features=demo.features, data=demo.data, device="cpu"))
    assert explorer.source is not None
    thumbnail = next(index for index, record in enumerate(explorer.source.records) if record.label == SPECIES)
    with serving(explorer) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 960})
        page.goto(url)
        edit_a_patch(page, thumbnail, _trait_patch(explorer, thumbnail), explorer.layout.grid_hw, whole_image=True)
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
