"""The README's picture of one-shot segmentation: the one labelled specimen with its mask painted
on, then the first unseen specimens of its species with the benchmark's masks (top) and the masks
``traitlens segment`` carried to them (bottom), as the README's commands wrote them (``make docs``
runs it).

    scripts/segmentation_figure.py [--work runs/segment] [--out docs/images/segment.png]

The README's commands (the specimens of seed 81, the segmentation of sp00) run first in
``--work``, each skipped when its output is already there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from readme_figures import figure_main

from traitlens.overlay import label_colour, label_overlay
from traitlens.segment.result import read_segmentation

STEPS = [  # (what the step writes, the README's command)
    ("specimens/g81/traits.json", "specimens generate --n-images 4800 --seed 81 --out specimens/g81"),
    ("segments/sp00/segmentation.json", "segment --model torchvision:mobilenet_v2 --support specimens/g81/images/sp00/00000000.png "
                                        "--support-mask specimens/g81/annotations/sp00/00000000.png "
                                        "--data specimens/g81/images/sp00 --out segments/sp00"),
]
TILE = 144
N_SHOWN = 5


def _tile(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def figure(work: Path) -> Image.Image:
    segmented = read_segmentation(work / "segments/sp00")
    bench = work / "specimens/g81"
    support = "images/sp00/00000000.png"
    shown = [image for image in segmented.images if not image.support][:N_SHOWN]
    label, header = 18, 22
    canvas = Image.new("RGB", (TILE * (N_SHOWN + 1), header + 2 * (TILE + label) + 40), "white")
    draw = ImageDraw.Draw(canvas)
    support_image = Image.open(bench / support)
    support_labels = np.asarray(Image.open(bench / "annotations/sp00/00000000.png"))
    canvas.paste(_tile(label_overlay(support_image, support_labels)), (0, header + label))
    draw.text((4, 4), "the one labelled specimen", fill="black")
    draw.text((TILE + 4, 4), "unseen specimens of sp00", fill="black")
    for column, image in enumerate(shown, start=1):
        name = Path(image.source).name
        photo = Image.open(work / "segments/sp00" / image.source)
        truth = np.asarray(Image.open(bench / "annotations/sp00" / name))
        predicted = np.asarray(Image.open(work / "segments/sp00" / image.annotation))
        canvas.paste(_tile(label_overlay(photo, truth)), (column * TILE, header + label))
        canvas.paste(_tile(label_overlay(photo, predicted)), (column * TILE, header + 2 * label + TILE))
        draw.text((column * TILE + 4, header + label + TILE + 2), f"confidence {image.confidence:.2f}", fill="black")
    draw.text((TILE + 4, header + 2), "above: the benchmark's masks; below: traitlens segment's, from the one on the left",
              fill="black")
    x, y = 4, header + 2 * (TILE + label) + 4  # the legend, background left out
    for number, text in enumerate(segmented.names[1:], start=1):
        width = 14 + 7 * len(text) + 12
        if x + width > canvas.width:
            x, y = 4, y + 16
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=label_colour(number))
        draw.text((x + 14, y), text, fill="black")
        x += width
    return canvas


if __name__ == "__main__":
    sys.exit(figure_main(__doc__ or "", "segment", "segment.png", STEPS, figure))
