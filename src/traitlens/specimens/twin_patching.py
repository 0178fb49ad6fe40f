"""Patch a pair's trait latents in from the twin: the edit that asks for the look-alike.

Zeroing a trait's latents takes the trait away; a model that recognizes the look-alike by
evidence of its own (the trait's other value) is not moved by an absence. Patching sets the
chosen latents of every token to their values on the same token of the image's counterfactual
twin, which shows the look-alike's value of the trait, and keeps every other latent and the
SAE's reconstruction error (:func:`traitlens.interventions.latent_patch`). Per pair: how often
that turns a correct prediction into the look-alike, against as many random latents of matched
firing rate patched in the same way; twin reliance is the ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from traitlens.backbones import Backbone, TokenSelection
from traitlens.interventions import latent_patch
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.benchmark import Benchmark, ScoringError
from traitlens.specimens.flips import lookalike_flip_rate
from traitlens.specimens.reliance import benchmark_pixels, read_twin_benchmark
from traitlens.specimens.suppression import SuppressionOptions, matched_random_latents, pooled_flip_rate


@torch.inference_mode()
def twin_patch_flips(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection,
                     benchmark: Benchmark, trait_latents: Mapping[str, Sequence[int]], frequency_w: torch.Tensor,
                     options: SuppressionOptions, show_progress: bool = False) -> list[dict[str, Any]]:
    """One row per look-alike pair, then an ``all`` row pooling them: eligible images (correct
    before the edit), the flip rate with the pair's trait latents patched in from each image's
    twin, and with matched random latents patched (mean over ``options.n_random`` draws)."""
    read_twin_benchmark(benchmark.root)
    class_index = benchmark.class_index(backbone.class_names, backbone.spec)
    layout = backbone.layer(layer).layout
    generator = torch.Generator().manual_seed(options.seed)
    progress = tqdm(total=len(benchmark.lookalikes) * (1 + options.n_random), unit="edit", desc="twin patching",
                    disable=not show_progress)
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[dict[str, Any]]] = {"trait": [], "random": []}
    for pair in benchmark.lookalikes:
        latents = list(trait_latents.get(pair.trait, []))
        sources = sorted(source for source, species in benchmark.image_species.items() if species in (pair.a, pair.b))
        if not latents or not sources:
            continue
        chosen = [latents, *(matched_random_latents(frequency_w, latents, options.candidates, generator)
                             for _ in range(options.n_random))]
        before: list[torch.Tensor] = []
        species: list[torch.Tensor] = []
        after: list[list[torch.Tensor]] = [[] for _ in chosen]
        for start in range(0, len(sources), options.batch_size):
            batch = sources[start:start + options.batch_size]
            pixels_bchw = benchmark_pixels(benchmark.root, batch, backbone)
            twin_btd = backbone.tokens(benchmark_pixels(benchmark.root, [benchmark.twins[s] for s in batch], backbone),
                                       layer)[layer]
            before.append(backbone.forward(pixels_bchw).argmax(1).cpu())
            species.append(torch.tensor([class_index[benchmark.image_species[s]] for s in batch]))
            for predictions, patched in zip(after, chosen, strict=True):
                with backbone.edit(layer, latent_patch(sae, patched, twin_btd, layout, selection)):
                    predictions.append(backbone.forward(pixels_bchw).argmax(1).cpu())
        pair_map = {class_index[pair.a]: class_index[pair.b], class_index[pair.b]: class_index[pair.a]}
        trait, *draws = [lookalike_flip_rate(torch.cat(before), torch.cat(predictions), torch.cat(species), pair_map)
                         for predictions in after]
        progress.update(len(chosen))
        pooled["trait"].append(trait)
        pooled["random"] += draws
        rows.append({"pair": f"{pair.a} / {pair.b}", "trait": pair.trait, "n_eligible": trait["n_eligible"],
                     "flip_rate": trait["flip_rate"], "flip_rate_random": pooled_flip_rate(draws)})
    progress.close()
    if not rows:
        raise ScoringError("no look-alike pair has both images and trait latents to patch")
    rows.append({"pair": "all", "trait": "", "n_eligible": sum(rate["n_eligible"] for rate in pooled["trait"]),
                 "flip_rate": pooled_flip_rate(pooled["trait"]), "flip_rate_random": pooled_flip_rate(pooled["random"])})
    return rows


PATCHING_COLUMNS = ["pair", "trait", "n_eligible", "flip_rate", "flip_rate_random"]
