"""The demo on the embedded default: discover, localize and test traits on the specimens benchmark.

``make demo`` draws specimens from a seed the zoo's ``traitlens:specimens-vit-mean`` never saw and:

1. measures the model's accuracy on them;
2. stores the tokens of its third block and trains a TopK SAE on them;
3. analyzes every latent (``traitlens features``) and writes the browsable feature report;
4. scores trait discovery: the SAE's best latent per trait against raw neurons, PCA and k-means;
5. localizes with Grad-CAM and LayerCAM against their Finer-CAM versions on look-alike pairs;
6. suppresses each pair's trait latents inside the model and counts look-alike flips, against
   random latents of matched frequency; patches each pair's twin-difference latents in from every
   image's counterfactual twin and counts flips the same way; and attributes each pair's
   comparative score to latents;
7. writes one HTML report (``report.html``) with all of it, and its pictures (``report-figures/``).

Steps 1-3 resume where an interruption left them; the scoring steps 4-7 (about two minutes) run again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from traitlens.atomic import atomic_write_json
from traitlens.backbones import load_backbone
from traitlens.checks import check_int
from traitlens.data import open_image_source
from traitlens.demo_report import write_demo_report
from traitlens.errors import TraitlensError
from traitlens.features import FeaturesConfig, LatentFeatures, analyze_features
from traitlens.features.report import write_report
from traitlens.interventions.setup import load_sae_on_model
from traitlens.output_folder import claim_output_folder
from traitlens.specimens.benchmark import read_benchmark
from traitlens.specimens.cam_localization import LOCALIZATION_COLUMNS, lookalike_localization
from traitlens.specimens.catalog import SPECIES
from traitlens.specimens.discovery import DiscoveryConfig, score_discovery
from traitlens.specimens.figures import report_figures
from traitlens.specimens.generate import JOB_FILE, GenerateConfig, generate
from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy
from traitlens.specimens.pair_attribution import lookalike_attribution
from traitlens.specimens.report import train_trait_sae
from traitlens.specimens.suppression import (
    SUPPRESSION_COLUMNS,
    SuppressionConfig,
    SuppressionOptions,
    score_suppression,
)
from traitlens.specimens.twin_latents import top_twin_latents, twin_difference
from traitlens.specimens.twin_patching import PATCHING_COLUMNS, twin_patch_flips
from traitlens.store import ActivationStore, ExtractConfig, extract
from traitlens.store.files import MANIFEST
from traitlens.store.summary import summarize_store
from traitlens.tables import markdown_table

DEMO_MODEL = "traitlens:specimens-vit-mean"
DEMO_MODEL_WHY = ("the zoo's model that tells the clearest true story: counterfactual twins show it relies on every "
                  "trait, and its head reads the mean of all its patch tokens, so an edit of a trait's latents can "
                  "change its answer (docs/results.md, \"The demo's model\")")
FIGURES = "report-figures"
N_STEPS = 7


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; the defaults are what ``make demo`` runs."""

    out: Path = Path("runs/demo")
    seed: int = 1
    """The embedded model was trained on seed 0; the demo measures it on images it never saw."""
    n_images: int = 1024
    layer: str = "blocks.2"
    """The one before the last of four blocks, as in ``specimens report``: at least one block reads the edit."""
    sae_expansion: int = 8
    sae_k: int = 16
    sae_epochs: int = 20
    trait_latents: int = 10
    """Latents suppressed per trait: one latent rarely holds a whole trait (see docs/results.md)."""
    n_random: int = 5
    """Draws of the matched random control."""
    overwrite: bool = False
    """Start ``out`` again from scratch instead of resuming it."""

    def __post_init__(self) -> None:
        check_int(self.n_images, "--n-images (one image per species at least)", TraitlensError, minimum=len(SPECIES))
        check_int(self.seed, "--seed", TraitlensError, minimum=0)
        for name in ("sae_expansion", "sae_k", "sae_epochs", "trait_latents", "n_random"):
            check_int(getattr(self, name), name, TraitlensError)
        if not isinstance(self.layer, str) or not self.layer:
            raise TraitlensError(f"--layer must name a block of {DEMO_MODEL}, got {self.layer!r}")

    @property
    def data(self) -> Path:
        return self.out / "specimens"

    @property
    def acts(self) -> Path:
        return self.out / "acts"

    @property
    def sae(self) -> Path:
        return self.out / "sae"

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def scores(self) -> Path:
        return self.out / "scores"

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def _step(number: int, text: str) -> None:
    print(f"[{number}/{N_STEPS}] {text}", file=sys.stderr, flush=True)


def _causal_tests(config: DemoConfig, sae_dir: Path) -> dict[str, Any]:
    """Suppression flips (trait latents picked on the masks), twin patching flips (latents picked by
    twin difference), then pair attribution, on the SAE's layer."""
    options = SuppressionOptions(n_latents=config.trait_latents, n_random=config.n_random)
    suppression = score_suppression(SuppressionConfig(model=DEMO_MODEL, sae=sae_dir, acts=config.acts, data=config.data,
                                                      out=config.scores, options=options, device="cpu"), show_progress=True)
    placed = load_sae_on_model(DEMO_MODEL, sae_dir, device="cpu")
    benchmark = read_benchmark(config.data)
    twin_latents = top_twin_latents(twin_difference(placed.backbone, placed.sae, placed.layer, placed.tokens, benchmark),
                                    config.trait_latents)
    patching = twin_patch_flips(placed.backbone, placed.sae, placed.layer, placed.tokens, benchmark, twin_latents,
                                torch.from_numpy(LatentFeatures(config.features).frequency), options, show_progress=True)
    attribution = lookalike_attribution(placed.backbone, placed.sae, placed.layer, placed.tokens, open_image_source(config.data),
                                        benchmark, trait_latents=suppression["trait_latents"], show_progress=True)
    return {"layer": placed.layer, "trait_latents": suppression["trait_latents"], "suppression": suppression["rows"],
            "twin_latents": twin_latents, "patching": patching, "attribution": attribution}


def _refuse_another_model(config: DemoConfig) -> None:
    """A demo folder made on another model (before the demo moved to the mean-pooled ViT, it ran
    on ``traitlens:specimens-vit``) is refused in one line, before anything is drawn into it."""
    if config.overwrite or not (config.acts / MANIFEST).is_file():
        return
    model = ActivationStore(config.acts).model.spec
    if model != DEMO_MODEL:
        raise TraitlensError(f"{config.out} holds a demo of {model}; the demo now runs on {DEMO_MODEL}: "
                             "pass --overwrite to start it again, or choose another --out")


def run_demo(config: DemoConfig = DemoConfig()) -> str:
    """Run every step under ``config.out`` (resuming finished ones) and return what to print."""
    # each step claims its own subfolder too; a demo from before the owner file is known by its
    # specimens job or its results
    claim_output_folder(config.out, "demo", overwrite=config.overwrite, resumable=True,
                        own_files=(f"specimens/{JOB_FILE}", "scores/demo.json"))
    _refuse_another_model(config)
    _step(1, f"specimens: {config.n_images} images of seed {config.seed}, and the model's accuracy on them")
    # twin-safe framing, as the model was trained on (and the twins for the oracle and reliance)
    data = generate(GenerateConfig(config.data, n=config.n_images, seed=config.seed, twins=True))
    accuracy = model_accuracy(AccuracyConfig(model=DEMO_MODEL, data=data / "images", device="cpu"))
    _step(2, f"extract {config.layer} tokens and train a TopK SAE ({config.sae_expansion}x, k={config.sae_k}, {config.sae_epochs} epochs)")
    extract(ExtractConfig(model=DEMO_MODEL, data=data, layers=(config.layer,), out=config.acts, tokens="all", batch_size=64))
    sae_dir = train_trait_sae(config.acts, config.layer, config.sae, config.sae_expansion, config.sae_k, config.sae_epochs)
    _step(3, "features: every latent's statistics, top images and associations, and their report")
    analyze_features(FeaturesConfig(sae=sae_dir, acts=config.acts, out=config.features))
    features_index = write_report(config.features)
    _step(4, "trait discovery: SAE latents vs neurons, PCA and k-means")
    discovery = score_discovery(DiscoveryConfig(acts=config.acts, data=data, out=config.scores, sae=sae_dir))
    _step(5, "localization: Grad-CAM and LayerCAM vs Finer-CAM on look-alike pairs")
    localization = lookalike_localization(load_backbone(DEMO_MODEL), open_image_source(data), read_benchmark(data),
                                          show_progress=True).rows
    _step(6, "interventions: suppress trait latents and patch twin latents, each vs matched random latents; "
             "attribute look-alike pairs to latents")
    causal = _causal_tests(config, sae_dir)
    results = {"model": DEMO_MODEL, "why": DEMO_MODEL_WHY, "seed": config.seed, "n_images": config.n_images, "accuracy": accuracy,
               "discovery": discovery, "localization": localization, **causal}
    atomic_write_json(config.scores / "demo.json", results)
    _step(7, "report, with its pictures")
    features = LatentFeatures(config.features)
    figures = report_figures(config.out / FIGURES, FIGURES, results, load_sae_on_model(DEMO_MODEL, sae_dir, device="cpu"),
                             features, open_image_source(data), read_benchmark(data))
    write_demo_report(config.report, results, features, features_index, figures)
    return "\n".join([
        summarize_store(config.acts),
        f"Why {DEMO_MODEL}: {DEMO_MODEL_WHY}",
        f"{DEMO_MODEL} on {accuracy['n_images']} specimens of seed {config.seed} (it was trained on seed 0): "
        f"accuracy {accuracy['accuracy']:.1%}",
        "",
        (config.scores / "discovery.md").read_text().rstrip(),
        "",
        "# Localization on look-alike pairs (mass of the map on the distinguishing trait)",
        "",
        markdown_table(localization, LOCALIZATION_COLUMNS).rstrip(),
        "",
        f"# Look-alike flips when each pair's {config.trait_latents} trait latents are zeroed at {causal['layer']}",
        "",
        markdown_table(causal["suppression"], SUPPRESSION_COLUMNS).rstrip(),
        "",
        f"# Look-alike flips when each pair's {config.trait_latents} twin-difference latents are patched in from the twin "
        f"at {causal['layer']}",
        "",
        markdown_table(causal["patching"], PATCHING_COLUMNS).rstrip(),
        "",
        f"Report: {config.report}  (features: {features_index})",
    ])
