"""``traitlens specimens report``: discover, localize and test one model against what it really uses.

On a fresh benchmark with counterfactual twins (``--seed``; the confusion references come from a
second, held-out one of seed + 1), for any classifier whose classes are the specimens:

1. accuracy, and **twin reliance** per pair with oracle maps (:mod:`traitlens.specimens.reliance`);
2. **localization**: each CAM method plainly and as Finer-CAM with the look-alike, the closest
   logit and the most-confused class as reference, at pixel and patch resolution and against the
   oracle, between chance and the oracle's own score (:mod:`traitlens.specimens.cam_localization`);
3. **discovery**: a TopK SAE on the tokens of one layer, its best latent per trait against the
   best neuron, PCA direction and k-means centroid (:mod:`traitlens.specimens.discovery`);
4. **suppression**: per pair, zeroing the latents chosen by mask AP and the twin-difference
   latents (:mod:`traitlens.specimens.twin_latents`), each against matched random latents and
   against the twin reliance, the rate an edit that removes the trait perfectly would reach.

Writes ``report.md`` (the tables), ``report.html`` (the tables with pictures, in ``report-figures/``) and
``report.json``; the benchmark, store, SAE and per-step
scores stay in their subfolders, and a killed run resumes its generation, extraction and SAE.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from traitlens.atomic import atomic_write_bytes, atomic_write_json
from traitlens.backbones import Backbone, load_backbone
from traitlens.checks import check_int
from traitlens.data import open_image_source
from traitlens.html_pages import markdown_body, page
from traitlens.output_folder import claim_output_folder
from traitlens.sae import RunConfig, SAEConfig, TrainConfig, train
from traitlens.sae.evaluation import reconstruction_metrics
from traitlens.sae.io import load_sae_with_config
from traitlens.specimens.baselines import SAEFeatures
from traitlens.specimens.benchmark import ScoringError, read_benchmark
from traitlens.specimens.cam_localization import (
    LOCALIZATION_COLUMNS,
    confusion_references,
    lookalike_localization,
)
from traitlens.specimens.discovery import DiscoveryConfig, DiscoveryOptions, score_discovery, trait_feature_ap
from traitlens.specimens.figures import Pictures, bar_chart, localization_figures, suppression_figures
from traitlens.specimens.generate import JOB_FILE, GenerateConfig, generate
from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy
from traitlens.specimens.reliance import RelianceConfig, read_oracle_map, score_reliance
from traitlens.specimens.suppression import SuppressionOptions, suppression_flips, top_trait_latents
from traitlens.specimens.twin_latents import top_twin_latents, twin_difference
from traitlens.specimens.twin_patching import twin_patch_flips
from traitlens.store import ActivationStore, ExtractConfig, extract
from traitlens.tables import markdown_table, write_text

COMMAND = "specimens report"
FIGURES = "report-figures"
N_STEPS = 6


@dataclass(frozen=True)
class ReportConfig:
    model: str
    out: Path
    seed: int = 1
    n_images: int = 1024
    layer: str | None = None
    """The layer the SAE reads and the edits change (default: the one before the last, so at
    least one layer reads the edit)."""
    sae_expansion: int = 8
    sae_k: int = 16
    sae_epochs: int = 20
    trait_latents: int = 10
    n_random: int = 5
    methods: tuple[str, ...] = ("grad-cam", "layercam")
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_int(self.n_images, "--n-images", ScoringError, minimum=32)
        check_int(self.seed, "--seed", ScoringError, minimum=0)
        for name in ("sae_expansion", "sae_k", "sae_epochs", "trait_latents", "n_random"):
            check_int(getattr(self, name), name, ScoringError)

    @property
    def held_out_seed(self) -> int:
        return self.seed + 1


def train_trait_sae(acts: Path, layer: str, out: Path, expansion: int, k: int, epochs: int) -> Path:
    """A TopK SAE (``expansion`` x the layer's width, ``k`` active) trained for ``epochs`` passes
    over every stored token of ``layer`` (resumed when ``out`` holds an unfinished run)."""
    store = ActivationStore(acts)
    stored = store.layer(layer)
    run = RunConfig(SAEConfig(d_in=stored.width, width=expansion * stored.width, activation="topk", k=k), lr=1e-3)
    config = TrainConfig(acts=acts, layer=stored.name, out=out, runs=(run,), n_tokens=epochs * stored.n_tokens,
                         batch_size=1024, warmup_steps=20, device="cpu")
    return train(config, resume=True)[0]


def _step(number: int, text: str) -> None:
    print(f"[{number}/{N_STEPS}] {text}", file=sys.stderr, flush=True)


def _edit_layer(config: ReportConfig, backbone: Backbone) -> str:
    if config.layer is not None:
        return backbone.resolve_layer(config.layer)
    names = backbone.layer_names
    return names[-2] if len(names) > 1 else names[-1]


def _suppression(config: ReportConfig, sae_dir: Path, acts: Path, data: Path, reliance: dict[str, Any]) -> dict[str, Any]:
    """Suppression flips of the mask-AP latents and of the twin-difference latents, and flips when
    the twin-difference latents are patched in from the twin, per pair."""
    from traitlens.interventions.setup import load_sae_on_model

    benchmark = read_benchmark(data)
    placed = load_sae_on_model(config.model, sae_dir, device="cpu")
    store = ActivationStore(acts)
    ap_tw, frequency_w = trait_feature_ap(SAEFeatures(placed.sae), store, placed.layer, benchmark, DiscoveryOptions())
    choices = {
        "mask AP": top_trait_latents(ap_tw, list(benchmark.trait_labels), config.trait_latents),
        "twin difference": top_twin_latents(twin_difference(placed.backbone, placed.sae, placed.layer, placed.tokens, benchmark),
                                            config.trait_latents),
    }
    options = SuppressionOptions(n_latents=config.trait_latents, n_random=config.n_random)
    source = open_image_source(data)
    flips = {name: suppression_flips(placed.backbone, placed.sae, placed.layer, placed.tokens, source, benchmark, latents,
                                     frequency_w, options, show_progress=True)
             for name, latents in choices.items()}
    patched = twin_patch_flips(placed.backbone, placed.sae, placed.layer, placed.tokens, benchmark, choices["twin difference"],
                               frequency_w, options, show_progress=True)
    reliance_of = {row["trait"] or "all": row["reliance"] for row in reliance["pairs"]}
    rows = []
    twin_rows, patch_rows = ({row["pair"]: row for row in found} for found in (flips["twin difference"], patched))
    for mask_row in flips["mask AP"]:
        twin_row, patch_row = twin_rows.get(mask_row["pair"], {}), patch_rows.get(mask_row["pair"], {})
        rows.append({"pair": mask_row["pair"], "trait": mask_row["trait"], "n_eligible": mask_row["n_eligible"],
                     "reliance": reliance_of.get(mask_row["trait"] or "all"),
                     "flip_mask_ap": mask_row["flip_rate"], "random_mask_ap": mask_row["flip_rate_random"],
                     "flip_twin": twin_row.get("flip_rate"), "random_twin": twin_row.get("flip_rate_random"),
                     "flip_patch": patch_row.get("flip_rate"), "random_patch": patch_row.get("flip_rate_random")})
    return {"layer": placed.layer, "latents": choices, "rows": rows, "flips": {**flips, "twin patch": patched}}


SUPPRESSION_REPORT_COLUMNS = ["pair", "trait", "n_eligible", "reliance", "flip_mask_ap", "random_mask_ap", "flip_twin",
                              "random_twin", "flip_patch", "random_patch"]


def run_report(config: ReportConfig) -> dict[str, Any]:
    """Every step under ``config.out``; returns what ``report.json`` holds."""
    claim_output_folder(config.out, COMMAND, overwrite=config.overwrite, resumable=True,
                        own_files=(f"specimens/{JOB_FILE}", "report.json"))
    data, held_out = config.out / "specimens", config.out / "held-out"
    scores = config.out / "scores"
    backbone = load_backbone(config.model)
    layer = _edit_layer(config, backbone)  # a bad --layer is refused before any work
    _step(1, f"specimens with twins: {config.n_images} images of seed {config.seed} (scored) and "
             f"{config.n_images // 4} of seed {config.held_out_seed} (held out, for confusion references)")
    generate(GenerateConfig(data, n=config.n_images, seed=config.seed, twins=True))
    generate(GenerateConfig(held_out, n=config.n_images // 4, seed=config.held_out_seed, twins=True))
    accuracy = model_accuracy(AccuracyConfig(model=config.model, data=data / "images", device="cpu"))
    _step(2, "twin reliance and oracle maps")
    reliance = score_reliance(RelianceConfig(model=config.model, data=data, out=scores / "reliance", device="cpu"))
    benchmark = read_benchmark(data)
    _step(3, f"localization: {', '.join(config.methods)} vs Finer-CAM (three references), pixels, patches and oracle")
    class_index = benchmark.class_index(backbone.class_names, config.model)
    confusion = confusion_references(backbone, open_image_source(held_out / "images"), class_index)
    oracle = {source: read_oracle_map(scores / "reliance", source) for source in benchmark.image_species
              if benchmark.distinguishing_traits(benchmark.image_species[source])}
    localization = lookalike_localization(backbone, open_image_source(data), benchmark, config.methods, layer=reliance["layer"],
                                          references=("lookalike", "closest", "confusion"), confusion=confusion,
                                          oracle=oracle, show_progress=True)
    _step(4, f"discovery: {layer} tokens, a TopK SAE ({config.sae_expansion}x, k={config.sae_k}, {config.sae_epochs} epochs) "
             "vs neurons, PCA and k-means")
    acts = config.out / "acts"
    extract(ExtractConfig(model=config.model, data=data, layers=(layer,), out=acts, tokens="all", batch_size=64, device="cpu"))
    sae_dir = train_trait_sae(acts, layer, config.out / "sae", config.sae_expansion, config.sae_k, config.sae_epochs)
    store = ActivationStore(acts)
    sae, _ = load_sae_with_config(sae_dir, device="cpu")
    fit = reconstruction_metrics(sae, store, store.layer(layer), batch_size=4096)
    discovery = score_discovery(DiscoveryConfig(acts=acts, data=data, out=scores, sae=sae_dir))
    _step(5, "suppression: mask-AP and twin-difference latents vs matched random latents vs twin reliance")
    suppression = _suppression(config, sae_dir, acts, data, reliance)
    class_names = list(class_index)
    result = {
        "model": config.model, "config": {**asdict(config), "out": str(config.out)}, "accuracy": accuracy,
        "reliance": reliance, "localization": localization.to_dict(),
        "confusion_references": {class_names[c]: class_names[r] for c, r in confusion.items()},
        "sae": {"layer": layer, "n_tokens": store.layer(layer).n_tokens, "epochs": config.sae_epochs,
                "explained_variance": fit["explained_variance"], "l0": fit["l0"]},
        "discovery": discovery, "suppression": suppression,
    }
    _step(6, "report, with its pictures")
    markdown = report_markdown(result, (scores / "discovery.md").read_text())
    _write_report_page(config, markdown, suppression, sae_dir, data, scores / "reliance")
    atomic_write_json(config.out / "report.json", result)
    write_text(config.out / "report.md", markdown)
    return result


def _write_report_page(config: ReportConfig, markdown: str, suppression: dict[str, Any], sae_dir: Path, data: Path,
                       reliance: Path) -> None:
    """``report.html``: the tables of ``report.md`` with pictures (:mod:`traitlens.specimens.figures`):
    per pair the trait, the twin, Grad-CAM, Finer-CAM and the oracle map, a chart of the flips, and
    images before and after the mask-AP latents are zeroed."""
    from traitlens.interventions.setup import load_sae_on_model

    placed = load_sae_on_model(config.model, sae_dir, device="cpu")
    benchmark, source = read_benchmark(data), open_image_source(data)
    class_index = benchmark.class_index(placed.backbone.class_names, config.model)
    pictures = Pictures(config.out / FIGURES, FIGURES)
    pairs = [row for row in suppression["rows"] if row["pair"] != "all"]
    chart = bar_chart("look-alike flips per pair", [row["trait"] for row in pairs],
                      {"mask-AP latents": [row["flip_mask_ap"] for row in pairs],
                       "matched random": [row["random_mask_ap"] for row in pairs],
                       "twin-difference latents": [row["flip_twin"] for row in pairs],
                       "twin-difference latents patched from the twin": [row["flip_patch"] for row in pairs],
                       "twin reliance": [row["reliance"] for row in pairs]})
    body = "\n".join([
        markdown_body(markdown),
        "<h2>Pictures</h2>",
        "<h3>Localization</h3><p>One image per pair: the trait that tells it from its look-alike (tinted), its "
        "counterfactual twin, Grad-CAM of its species, Finer-CAM against the look-alike, and the oracle map (how much "
        "the margin drops when one patch comes from the twin).</p>",
        *localization_figures(pictures, placed, source, benchmark, class_index, oracle=reliance).values(),
        "<h3>Suppression</h3>", chart,
        "<p>Images with the probabilities of the species and its look-alike before &rarr; after the mask-AP latents "
        "are zeroed.</p>",
        *suppression_figures(pictures, placed, source, benchmark, class_index, suppression["latents"]["mask AP"]).values(),
    ])
    atomic_write_bytes(config.out / "report.html", page(f"traitlens specimens report: {config.model}", body).encode())


def report_markdown(result: dict[str, Any], discovery_md: str) -> str:
    config, localization = result["config"], result["localization"]
    agreement = localization["reference_agreement"]
    grid = "x".join(str(side) for side in localization["grid_hw"])
    return "\n".join([
        f"# {result['model']} on specimens of seed {config['seed']}", "",
        f"Accuracy {result['accuracy']['accuracy']:.2%} on {result['accuracy']['n_images']} images with twins.", "",
        "## Twin reliance", "",
        markdown_table(result["reliance"]["pairs"], ["pair", "trait", "n_images", "n_correct", "n_to_lookalike", "reliance"]),
        "",
        f"## Localization ({localization['layer']}, {grid} grid)", "",
        "Pixel columns score the map at the image's resolution against the distinguishing-trait mask; patch columns on the "
        "model's grid (pointing within one patch); `oracle_spearman` is the rank correlation with the oracle map. The "
        f"closest-logit reference was the look-alike for {agreement.get('closest', 0):.1%} of the images, the most-confused "
        f"class (from held-out seed {config['seed'] + 1}) for {agreement.get('confusion', 0):.1%}.", "",
        markdown_table(localization["rows"], LOCALIZATION_COLUMNS),
        "",
        f"## Discovery ({result['sae']['layer']}: SAE on {result['sae']['n_tokens']} tokens x {result['sae']['epochs']} epochs, "
        f"explained variance {result['sae']['explained_variance']:.3f}, L0 {result['sae']['l0']:.1f})", "",
        discovery_md.split("\n", 1)[1].strip(),
        "",
        f"## Suppression ({result['suppression']['layer']}, {config['trait_latents']} latents per pair)", "",
        "Share of correctly predicted images that turn into the look-alike when the pair's latents are zeroed: chosen by mask "
        "AP or by twin difference, each against as many random latents of matched firing rate; `reliance` is the twin's own "
        "flip rate, what removing the trait perfectly would reach. `flip_patch` patches the twin-difference latents in from "
        "the twin instead (each token's chosen latents take their values on the twin's token; the rest of the token stays), "
        "`random_patch` as many matched random latents.", "",
        markdown_table(result["suppression"]["rows"], SUPPRESSION_REPORT_COLUMNS),
        "",
    ])
