"""Per look-alike pair, the latents that separate a species from its look-alike."""

from __future__ import annotations

from pathlib import Path

import torch

from traitlens.backbones import load_backbone
from traitlens.data import open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.interventions.attribution import latent_attribution
from traitlens.sae.io import load_sae_with_config
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.pair_attribution import lookalike_attribution


def test_rows_rank_latents_by_their_mean_attribution(specimens_with_sae: tuple[Path, Path]) -> None:
    data, sae_dir = specimens_with_sae
    sae, _ = load_sae_with_config(sae_dir)
    backbone = load_backbone("traitlens:specimens-vit")
    benchmark, source = read_benchmark(data), open_image_source(data)
    rows = lookalike_attribution(backbone, sae, "blocks.1", "all", source, benchmark, top=4,
                                 trait_latents={pair.trait: [0, 1] for pair in benchmark.lookalikes}, batch_size=5)
    species_present = {benchmark.image_species[benchmark.resolve(record.source)] for record in source.records}
    assert {row["species"] for row in rows} == {s for pair in benchmark.lookalikes for s in (pair.a, pair.b)} & species_present
    row = rows[0]
    names = backbone.class_names
    assert names is not None
    images = [i for i, record in enumerate(source.records) if benchmark.image_species[benchmark.resolve(record.source)] == row["species"]]
    batch = next(pixel_batches(source, backbone.preprocess, len(images), images))
    expected_w = latent_attribution(backbone, sae, "blocks.1", "all", batch.pixels_bchw,
                                    torch.full((len(images),), names.index(row["species"])),
                                    torch.full((len(images), 1), names.index(row["lookalike"])), 1.0).attribution_bw.double().mean(0)
    top = [entry["latent"] for entry in row["top_latents"]]
    assert top == [w for w in torch.argsort(-expected_w, stable=True)[:4].tolist() if expected_w[w] > 0]
    assert top, "some latent speaks for the species"
    for entry in row["top_latents"]:
        assert abs(entry["attribution"] - float(expected_w[entry["latent"]])) < 1e-4
    assert row["top_in_trait_latents"] == sum(latent in (0, 1) for latent in top)
