"""Which SAE latents separate each species from its look-alike, in the model's eyes.

For every look-alike pair and both directions, the images of one species are explained by
comparative latent attribution (:func:`traitlens.interventions.attribution.latent_attribution`):
gradient x activation of ``y_species - gamma * y_lookalike`` on the latents, averaged over the
images. The latents with the largest mean attribution are the features the model uses to tell the
species from its look-alike; the benchmark says which trait that should be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from traitlens.backbones import Backbone, TokenSelection
from traitlens.data import ImageSource
from traitlens.interventions.attribution import attribute_images
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.benchmark import Benchmark


def lookalike_attribution(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection,
                          source: ImageSource, benchmark: Benchmark, gamma: float = 1.0, top: int = 3,
                          trait_latents: Mapping[str, Sequence[int]] | None = None,
                          batch_size: int = 32, show_progress: bool = False) -> list[dict[str, Any]]:
    """One row per species with a look-alike: ``species``, ``lookalike``, ``trait``, ``n_images``,
    ``top_latents`` (the ``top`` latents of highest positive mean attribution, with ``attribution``) and,
    given ``trait_latents`` (per trait, the latents found for it on the masks), how many of the
    top latents are among the trait's."""
    class_index = benchmark.class_index(backbone.class_names, backbone.spec)
    species_of = benchmark.species_of([record.source for record in source.records])
    rows = []
    directions = [(pair, species, lookalike) for pair in benchmark.lookalikes
                  for species, lookalike in ((pair.a, pair.b), (pair.b, pair.a))]
    for pair, species, lookalike in tqdm(directions, unit="species", desc="attribution", disable=not show_progress):
        images = [index for index, name in enumerate(species_of) if name == species]
        if not images:
            continue
        totals = attribute_images(backbone, sae, layer, selection, source, images, class_index[species], [class_index[lookalike]],
                                  gamma, batch_size)
        mean_w = totals.attribution_w / totals.n_images
        # only latents that speak for the species: with fewer positive ones the list is shorter
        ranked = [int(w) for w in torch.argsort(-mean_w, stable=True)[:top] if float(mean_w[w]) > 0]
        row: dict[str, Any] = {"species": species, "lookalike": lookalike, "trait": pair.trait, "n_images": len(images),
                               "top_latents": [{"latent": w, "attribution": float(mean_w[w])} for w in ranked]}
        if trait_latents is not None:
            found = set(trait_latents.get(pair.trait, ()))
            row["top_in_trait_latents"] = sum(w in found for w in ranked)
        rows.append(row)
    return rows
