"""Causal test of discovered trait latents: suppress them inside the model and count look-alike flips.

For each look-alike pair, the SAE latents that best find the pair's distinguishing trait (highest
patch AP against the trait masks, :func:`traitlens.specimens.discovery.trait_feature_ap`) are
zeroed on every token the SAE reads, on the pair's images; :func:`lookalike_flip_rate` counts how
often a correct prediction becomes the look-alike. The control zeroes as many random latents, each
drawn from the latents whose firing rate is closest to its trait latent's, so the two edits remove
about as much activation; it is drawn ``n_random`` times and averaged. A latent that is the trait
moves predictions to the look-alike; a random latent of the same frequency should not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from traitlens.atomic import atomic_write_json
from traitlens.backbones import Backbone, TokenSelection
from traitlens.checks import check_int
from traitlens.cli_args import option_name
from traitlens.data import ImageSource, open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.interventions import LatentEdit, latent_edit
from traitlens.interventions.setup import load_sae_on_model
from traitlens.interventions.steer import predicted_classes
from traitlens.output_folder import check_output_folder
from traitlens.sae.model import SparseAutoencoder
from traitlens.specimens.baselines import SAEFeatures
from traitlens.specimens.benchmark import Benchmark, ScoringError, check_store_of, read_benchmark
from traitlens.specimens.discovery import DiscoveryOptions, trait_feature_ap
from traitlens.specimens.flips import lookalike_flip_rate
from traitlens.store.reader import ActivationStore
from traitlens.tables import markdown_table, write_text


@dataclass(frozen=True)
class SuppressionOptions:
    n_latents: int = 10
    """Trait latents zeroed together per trait (the best by patch AP)."""
    n_random: int = 5
    """Draws of the matched random control."""
    candidates: int = 20
    """A random latent is drawn among this many latents nearest in firing rate to its trait latent."""
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("n_latents", "n_random", "candidates", "batch_size"):
            check_int(getattr(self, name), option_name(name), ScoringError)
        check_int(self.seed, "--seed", ScoringError, minimum=0)


def top_trait_latents(ap_tw: torch.Tensor, traits: Sequence[str], n_latents: int) -> dict[str, list[int]]:
    """Per trait, the ``n_latents`` latents of highest AP (ties to the lower index); traits
    without positives (NaN rows) get none."""
    chosen: dict[str, list[int]] = {}
    for t, trait in enumerate(traits):
        if bool(torch.isnan(ap_tw[t]).all()):
            chosen[trait] = []
            continue
        order = sorted(range(ap_tw.shape[1]), key=lambda w: (-float(ap_tw[t, w]), w))
        chosen[trait] = order[:n_latents]
    return chosen


def matched_random_latents(frequency_w: torch.Tensor, latents: Sequence[int], candidates: int,
                           generator: torch.Generator) -> list[int]:
    """One random latent per trait latent, drawn among the ``candidates`` latents nearest to it in
    firing rate that are neither trait latents nor already drawn."""
    taken = set(latents)
    drawn: list[int] = []
    for latent in latents:
        distance_w = (frequency_w.double() - float(frequency_w[latent])).abs()
        nearest = [int(w) for w in torch.argsort(distance_w, stable=True) if int(w) not in taken]
        pool = nearest[:candidates]
        if not pool:
            raise ScoringError(f"the SAE has too few latents ({len(frequency_w)}) to draw a matched control")
        choice = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        taken.add(choice)
        drawn.append(choice)
    return drawn


def pooled_flip_rate(rates: Sequence[dict[str, Any]]) -> float | None:
    eligible = sum(rate["n_eligible"] for rate in rates)
    return sum(rate["n_flipped"] for rate in rates) / eligible if eligible else None


def suppression_flips(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection,
                      source: ImageSource, benchmark: Benchmark, trait_latents: Mapping[str, Sequence[int]],
                      frequency_w: torch.Tensor, options: SuppressionOptions = SuppressionOptions(),
                      show_progress: bool = False) -> list[dict[str, Any]]:
    """One row per look-alike pair, then an ``all`` row pooling them: eligible images, flip rate
    with the trait latents zeroed, with the single best trait latent zeroed, and with matched random
    latents zeroed (mean over draws), and the trait edit's change rate to any other class."""
    class_index = benchmark.class_index(backbone.class_names, backbone.spec)
    species_of = benchmark.species_of([record.source for record in source.records])
    layout = backbone.layer(layer).layout
    generator = torch.Generator().manual_seed(options.seed)

    progress = tqdm(total=len(benchmark.lookalikes) * (2 + options.n_random), unit="edit", desc="suppression",
                    disable=not show_progress)

    def after_zeroing(latents: Sequence[int], pixels: list[torch.Tensor]) -> torch.Tensor:
        edit = latent_edit(sae, [LatentEdit(latent, "zero") for latent in latents], layout, selection)
        after_n = predicted_classes(backbone, pixels, layer, edit)
        progress.update()
        return after_n

    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[dict[str, Any]]] = {"trait": [], "top": [], "random": []}
    for pair in benchmark.lookalikes:
        latents = list(trait_latents.get(pair.trait, []))
        images = [index for index, species in enumerate(species_of) if species in (pair.a, pair.b)]
        if not latents or not images:
            continue
        species_n = torch.tensor([class_index[species_of[index]] for index in images])
        pair_map = {class_index[pair.a]: class_index[pair.b], class_index[pair.b]: class_index[pair.a]}
        # the pair's images are decoded and predicted clean once, then edited 2 + n_random times
        pixels = [batch.pixels_bchw for batch in pixel_batches(source, backbone.preprocess, options.batch_size, images)]
        before_n = predicted_classes(backbone, pixels)
        zeroed = [latents, latents[:1], *(matched_random_latents(frequency_w, latents, options.candidates, generator)
                                          for _ in range(options.n_random))]
        trait, top, *draws = [lookalike_flip_rate(before_n, after_zeroing(chosen, pixels), species_n, pair_map)
                              for chosen in zeroed]
        pooled["trait"].append(trait)
        pooled["top"].append(top)
        pooled["random"] += draws
        rows.append({"pair": f"{pair.a} / {pair.b}", "trait": pair.trait, "latents": latents, "n_eligible": trait["n_eligible"],
                     "flip_rate": trait["flip_rate"], "flip_rate_top_latent": top["flip_rate"],
                     "flip_rate_random": pooled_flip_rate(draws), "change_rate": trait["change_rate"]})
    progress.close()
    if not rows:
        raise ScoringError("no look-alike pair has both images and trait latents to suppress")
    n_eligible = sum(rate["n_eligible"] for rate in pooled["trait"])
    rows.append({"pair": "all", "trait": "", "latents": [], "n_eligible": n_eligible,
                 "flip_rate": pooled_flip_rate(pooled["trait"]), "flip_rate_top_latent": pooled_flip_rate(pooled["top"]),
                 "flip_rate_random": pooled_flip_rate(pooled["random"]),
                 "change_rate": sum(rate["n_changed"] for rate in pooled["trait"]) / n_eligible if n_eligible else None})
    return rows


SUPPRESSION_COLUMNS = ["pair", "trait", "n_eligible", "flip_rate", "flip_rate_top_latent", "flip_rate_random", "change_rate"]


@dataclass(frozen=True)
class SuppressionConfig:
    """``specimens score suppression``: the model (``weights``/``pretrained`` as for any model
    spec), the SAE directory ``sae``, the store ``acts`` extracted from the benchmark ``data``
    (holding the SAE's layer) and the folder ``out``."""

    model: str
    sae: Path
    acts: Path
    data: Path
    out: Path
    options: SuppressionOptions = SuppressionOptions()
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    """How the trait latents are scored (their patch AP) before they are chosen."""
    weights: Path | None = None
    pretrained: bool = True
    device: str = "auto"


def score_suppression(config: SuppressionConfig, show_progress: bool = False) -> dict[str, Any]:
    """Pick each trait's latents on the store ``acts``, suppress them in ``model`` on the benchmark
    ``data``; writes ``out/suppression.json`` (rows, and each trait's latents with their APs) and
    ``out/suppression.md`` (written into, not claimed: :func:`traitlens.specimens.benchmark.claim_score_folder`)."""
    model, sae_dir, acts, data, out, options = config.model, config.sae, config.acts, config.data, config.out, config.options
    check_output_folder(out, ScoringError)
    benchmark = read_benchmark(data)
    store = ActivationStore(acts)
    check_store_of(store, data)
    placed = load_sae_on_model(model, sae_dir, weights=config.weights, pretrained=config.pretrained, device=config.device)
    if placed.backbone.weights_fingerprint() != store.model.weights_fingerprint:
        raise ScoringError(f"the weights of {model} differ from those the store at {acts} was extracted with")
    stored = store.layer(placed.layer)
    ap_tw, frequency_w = trait_feature_ap(SAEFeatures(placed.sae), store, stored.name, benchmark, config.discovery)
    traits = list(benchmark.trait_labels)
    chosen = top_trait_latents(ap_tw, traits, options.n_latents)
    rows = suppression_flips(placed.backbone, placed.sae, placed.layer, placed.tokens, open_image_source(data), benchmark,
                             chosen, frequency_w, options, show_progress)
    result = {"model": model, "sae": str(sae_dir), "acts": str(acts), "data": str(data), "layer": stored.name,
              "options": asdict(options), "trait_latents": chosen,
              "trait_latent_ap": {trait: [float(ap_tw[t, w]) for w in chosen[trait]] for t, trait in enumerate(traits)},
              "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "suppression.json", result)
    write_text(out / "suppression.md", "\n".join([
        "# Suppressing trait latents", "",
        f"Layer `{stored.name}` of `{model}`: per look-alike pair, the {options.n_latents} latents of `{sae_dir}` with the "
        "highest patch AP for the pair's trait are zeroed on every token; eligible images were predicted right before the "
        "edit. `flip_rate` is the share then predicted as the look-alike; `flip_rate_top_latent` zeroes the best latent "
        f"alone; `flip_rate_random` zeroes as many random latents of matched firing rate ({options.n_random} draws); "
        "`change_rate` counts any change of class.", "",
        markdown_table(rows, SUPPRESSION_COLUMNS),
    ]))
    return result
