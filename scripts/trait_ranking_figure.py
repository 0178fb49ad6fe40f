"""The picture of Prompt-CAM's trait ranking in docs/results.md: unseen specimens with their
distinguishing trait outlined, Prompt-CAM's map (mean of heads) and its top three ranked heads, as
``traitlens explain --method prompt-cam --rank-traits 3`` wrote them (``make docs`` runs it).

    scripts/trait_ranking_figure.py [--work runs/heads] [--out docs/images/prompt-cam-traits.png]

The README's commands (specimens of seeds 11 and 12, the Prompt-CAM head, its maps) run first in
``--work``, each skipped when its output is already there.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw
from readme_figures import figure_main

from traitlens.specimens.benchmark import read_benchmark

STEPS = [  # (what the step writes, the README's command)
    ("specimens/h11/traits.json", "specimens generate --n-images 2048 --seed 11 --out specimens/h11"),
    ("heads/vit-prompt-cam/head.json", "heads train --kind prompt-cam --epochs 40 --model traitlens:specimens-vit "
                                       "--data specimens/h11/images --out heads/vit-prompt-cam"),
    ("specimens/h12/traits.json", "specimens generate --twins --n-images 512 --seed 12 --out specimens/h12"),
    ("maps/prompt-cam/summary.json", "explain --model traitlens:specimens-vit --head heads/vit-prompt-cam --method prompt-cam "
                                     "--rank-traits 3 --data specimens/h12/images --out maps/prompt-cam"),
]
TILE = 160
N_ROWS = 4
COLUMNS = ["specimen, trait outlined", "Prompt-CAM (mean of heads)", "trait 1", "trait 2", "trait 3"]


def _outlined(image: Image.Image, mask_hw: np.ndarray) -> Image.Image:
    """``image`` with the edge of ``mask_hw`` drawn in yellow."""
    inner = mask_hw.copy()
    for axis in (0, 1):
        for step in (1, -1):
            inner &= np.roll(mask_hw, step, axis)
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[mask_hw & ~inner] = (255, 220, 0)
    return Image.fromarray(pixels)


def _tile(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def figure(work: Path) -> Image.Image:
    import json

    benchmark = read_benchmark(work / "specimens/h12")
    maps = work / "maps/prompt-cam"
    records = json.loads((maps / "summary.json").read_text())["images"]
    rows, species_seen = [], set()
    for record in records:  # the first image of each species with a look-alike, one species per pair
        source = benchmark.resolve(record["source"])
        species = benchmark.image_species[source]
        pair = benchmark.lookalike(species) if benchmark.distinguishing_traits(species) else None
        if pair is None or {pair.a, pair.b} & species_seen or record["target"] != species:
            continue
        species_seen.add(species)
        image = Image.open(benchmark.root / source)
        tiles = [_outlined(image, benchmark.distinguishing_mask(source)), Image.open(maps / PurePosixPath(record["overlay"]))]
        tiles += [Image.open(maps / PurePosixPath(trait["overlay"])) for trait in record["traits"][:3]]
        rows.append((f"{species} ({pair.trait})", [_tile(tile) for tile in tiles]))
        if len(rows) == N_ROWS:
            break
    header, label = 22, 18
    canvas = Image.new("RGB", (TILE * len(COLUMNS), header + (label + TILE) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for column, name in enumerate(COLUMNS):
        draw.text((column * TILE + 4, 4), name, fill="black")
    for row, (name, tiles) in enumerate(rows):
        top = header + row * (label + TILE)
        draw.text((4, top + 2), name, fill="black")
        for column, tile in enumerate(tiles):
            canvas.paste(tile, (column * TILE, top + label))
    return canvas


if __name__ == "__main__":
    sys.exit(figure_main(__doc__ or "", "heads", "prompt-cam-traits.png", STEPS, figure))
