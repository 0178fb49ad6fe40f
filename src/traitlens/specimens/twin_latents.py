"""Trait latents found with counterfactual twins instead of masks.

An image and its twin differ only in the trait that separates the image's species from its
look-alike, so an SAE latent whose activation changes between the two reads that trait (or
something the model computes from it). Per look-alike pair, a latent's **twin difference** is the
mean, over the pair's images, of ``sum over tokens |z(image) - z(twin)|`` at the SAE's layer; the
latents with the largest are the pair's twin-difference latents. Unlike mask AP this needs no
annotation and finds latents wherever the model carries the trait, not only on its pixels.
"""

from __future__ import annotations

import torch

from traitlens.backbones import Backbone, TokenSelection
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.benchmark import Benchmark
from traitlens.specimens.reliance import benchmark_pixels, read_twin_benchmark


@torch.no_grad()
def twin_difference(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection,
                    benchmark: Benchmark, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per pair trait, (w,) float64: the mean over the pair's images of the summed absolute change
    of each latent between image and twin (tokens compared position by position)."""
    read_twin_benchmark(benchmark.root)
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for pair in benchmark.lookalikes:
        sources = sorted(source for source, species in benchmark.image_species.items() if species in (pair.a, pair.b))
        total_w = torch.zeros(sae.config.width, dtype=torch.float64)
        for start in range(0, len(sources), batch_size):
            batch = sources[start:start + batch_size]
            image_tokens = backbone.layer(layer).layout.select(
                backbone.tokens(benchmark_pixels(benchmark.root, batch, backbone), layer)[layer], selection)
            twin_tokens = backbone.layer(layer).layout.select(
                backbone.tokens(benchmark_pixels(benchmark.root, [benchmark.twins[s] for s in batch], backbone), layer)[layer],
                selection)
            d = image_tokens.shape[-1]
            difference = sae.encode(image_tokens.reshape(-1, d).float()) - sae.encode(twin_tokens.reshape(-1, d).float())
            total_w += difference.abs().to(torch.float64).sum(0).cpu()
        totals[pair.trait], counts[pair.trait] = total_w, len(sources)
    return {trait: total / max(counts[trait], 1) for trait, total in totals.items()}


def top_twin_latents(difference: dict[str, torch.Tensor], n_latents: int) -> dict[str, list[int]]:
    """Per trait, the ``n_latents`` latents that change most (ties to the lower index); none for a
    trait whose twins change no latent."""
    chosen: dict[str, list[int]] = {}
    for trait, difference_w in difference.items():
        order = torch.argsort(-difference_w, stable=True)[:n_latents]
        chosen[trait] = [int(w) for w in order if float(difference_w[w]) > 0]
    return chosen
