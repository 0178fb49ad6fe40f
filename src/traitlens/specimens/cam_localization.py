"""Grad-CAM-style maps against Finer-CAM maps on look-alike pairs, scored in memory.

Every benchmark image whose species has a look-alike is explained for its true species, once
plainly and once comparatively against its look-alike (Finer-CAM: ``y_species - gamma *
y_lookalike``); each map, brought back to the image's resolution, is scored against the mask of
the traits that tell the two apart (:func:`traitlens.specimens.localization.localization_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from traitlens.backbones import Backbone
from traitlens.data import ImageSource
from traitlens.data.batches import pixel_batches
from traitlens.explain.config import DEFAULT_GAMMA
from traitlens.explain.maps import cam_maps
from traitlens.explain.methods import method_by_name
from traitlens.specimens.benchmark import Benchmark, ScoringError
from traitlens.specimens.flips import lookalike_map
from traitlens.specimens.localization import localization_scores

LOCALIZATION_COLUMNS = ["method", "n_images", "mass_inside", "pointing_game", "chance"]
_DISPLAY_NAMES = {"cam": "CAM", "grad-cam": "Grad-CAM", "grad-cam++": "Grad-CAM++", "hirescam": "HiResCAM",
                  "layercam": "LayerCAM", "score-cam": "Score-CAM"}


def lookalike_localization(backbone: Backbone, source: ImageSource, benchmark: Benchmark,
                           methods: Sequence[str] = ("grad-cam", "layercam"), gamma: float = DEFAULT_GAMMA,
                           layer: str | int | None = None, batch_size: int = 32,
                           show_progress: bool = False) -> list[dict[str, Any]]:
    """One row per method and variant (``Grad-CAM``, ``Finer-CAM (Grad-CAM)``, ...): images scored,
    mean mass inside the distinguishing-trait mask, pointing game, and chance (mask area)."""
    class_index = benchmark.class_index(backbone.class_names, backbone.spec)
    lookalike_of = lookalike_map(benchmark, list(class_index))
    sources = [benchmark.resolve(record.source) for record in source.records]
    images = [index for index, name in enumerate(sources) if benchmark.distinguishing_traits(benchmark.image_species[name])]
    if not images:
        raise ScoringError(f"no image of {source.root} belongs to a species with a look-alike")
    variants = [(_DISPLAY_NAMES.get(method_by_name(method).name, method), method, with_refs)
                for method in methods for with_refs in (False, True)]
    maps: dict[int, list[np.ndarray]] = {v: [] for v in range(len(variants))}
    masks: list[np.ndarray] = []
    progress = tqdm(total=len(images), unit="img", desc="localization", disable=not show_progress)
    for batch in pixel_batches(source, backbone.preprocess, batch_size, images):
        species_b = torch.tensor([class_index[benchmark.image_species[sources[index]]] for index in batch.indices])
        refs_bk = torch.tensor([[lookalike_of[int(species)]] for species in species_b])
        for v, (_, method, with_refs) in enumerate(variants):
            maps_bhw = cam_maps(backbone, batch.pixels_bchw, method, species_b, refs_bk if with_refs else None, gamma, layer)
            for row, image in enumerate(batch.images):
                maps[v].append(backbone.preprocess.unmap(maps_bhw[row], (image.height, image.width)).cpu().numpy())
        masks += [benchmark.distinguishing_mask(sources[index]) for index in batch.indices]
        progress.update(len(batch.indices))
    progress.close()
    masks_nhw = np.stack(masks)
    rows = []
    for v, (name, _, with_refs) in enumerate(variants):
        label = f"Finer-CAM ({name}, γ={gamma:g})" if with_refs else name
        rows.append({"method": label, **localization_scores(np.stack(maps[v]), masks_nhw)})
    return rows
