"""Trait discovery: per trait, the single feature of a feature set that best ranks the trait's patches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.atomic import atomic_write_json
from traitlens.distributed import Workers
from traitlens.errors import LayerError
from traitlens.features.patch_positives import (
    DEFAULT_MIN_COVERAGE,
    check_min_coverage,
    describe_positives,
    mask_geometry,
    patch_coverage,
    patch_positives,
)
from traitlens.sae.io import load_sae_with_config
from traitlens.specimens.average_precision import average_precision_by_target
from traitlens.specimens.baselines import (
    FeatureSet,
    KMeansFeatures,
    NeuronFeatures,
    PCAFeatures,
    SAEFeatures,
)
from traitlens.specimens.benchmark import Benchmark, ScoringError, read_benchmark
from traitlens.store.manifest import StoredLayer
from traitlens.store.reader import ActivationStore
from traitlens.tables import markdown_table, write_text

_FEATURE_CHUNK_ELEMENTS = 1 << 24  # feature scores are computed this many elements (rows x features) at a time


@dataclass(frozen=True)
class DiscoveryOptions:
    """How :func:`trait_discovery` and :func:`score_discovery` score feature sets."""

    min_coverage: float = DEFAULT_MIN_COVERAGE
    """A patch is positive for a trait from this share of its pixels, or as the image's patch with
    the most of it (:mod:`traitlens.features.patch_positives`, shared with the feature report)."""
    pca_components: int = 64
    """Principal directions of the PCA baseline (each scored in both signs)."""
    kmeans_clusters: int = 64
    """Centroids of the k-means baseline."""
    kmeans_iterations: int = 20
    """Most Lloyd iterations after the k-means++ seeding."""
    seed: int = 0
    """Seed of the k-means++ seeding."""
    max_score_elements: int = 1 << 27
    """Most feature scores (patches x features) held at once; larger sets are scored in column
    blocks, recomputing their features once per block."""
    device: str = "cpu"
    """Where features and average precisions are computed."""

    def __post_init__(self) -> None:
        check_min_coverage(self.min_coverage, ScoringError)
        if self.max_score_elements < 1:
            raise ScoringError(f"max_score_elements must be positive, got {self.max_score_elements}")


@dataclass(frozen=True)
class TraitDiscovery:
    """Per feature set and trait, the best single feature and its average precision (None for a
    trait without positive patches), over ``n_patches`` patches of the scored images."""

    traits: tuple[str, ...]
    n_positive: tuple[int, ...]
    n_patches: int
    n_images_fit: int
    n_images_scored: int
    n_features: dict[str, int]
    best_feature: dict[str, tuple[int | None, ...]]
    best_ap: dict[str, tuple[float | None, ...]]

    def rows(self) -> list[dict[str, Any]]:
        """One row per trait: ``trait``, ``positives``, ``chance`` (the positive rate, which is the
        expected AP of a random feature), then per feature set its best AP under the set's name
        and the feature's index under ``"<name> feature"``."""
        rows = []
        for t, trait in enumerate(self.traits):
            row: dict[str, Any] = {"trait": trait, "positives": self.n_positive[t], "chance": self.n_positive[t] / self.n_patches}
            for name in self.best_ap:
                row[name] = self.best_ap[name][t]
                row[f"{name} feature"] = self.best_feature[name][t]
            rows.append(row)
        return rows


def _patch_token_slice(store: ActivationStore, stored: StoredLayer) -> slice:
    kind = store.tokens
    if kind == "cls":
        raise LayerError(f"the store at {store.root} holds only CLS tokens; trait discovery needs patch tokens "
                         "(extract with --tokens patch or --tokens all)")
    first = stored.layout.first_patch(kind)  # the manifest was checked to fit the layout
    return slice(first, first + stored.layout.n_patches)


def _ap_blocks(feature_set: FeatureSet, acts_nd: torch.Tensor, positives_nt: torch.Tensor,
               max_score_elements: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per block of feature columns: (first column, AP per target and column (t, b), share of
    rows where each column is positive (b,)). A block holds at most ``max_score_elements`` scores."""
    n = len(acts_nd)
    probe_1f = feature_set.features(acts_nd[:1])
    n_features = probe_1f.shape[1]
    rows = max(1, _FEATURE_CHUNK_ELEMENTS // n_features)
    block = max(1, max_score_elements // n)
    for start in range(0, n_features, block):
        columns = slice(start, min(start + block, n_features))
        scores_nb = torch.empty(n, columns.stop - start, dtype=probe_1f.dtype, device=acts_nd.device)
        # copied into place chunk by chunk: a column slice would keep each chunk's full scores alive
        for first in range(0, n, rows):
            scores_nb[first : first + rows] = feature_set.features(acts_nd[first : first + rows])[:, columns]
        yield start, average_precision_by_target(scores_nb, positives_nt), (scores_nb > 0).to(torch.float64).mean(0)


def _best_features(feature_set: FeatureSet, acts_nd: torch.Tensor, positives_nt: torch.Tensor,
                   max_score_elements: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(n_features, best AP per target (t,), its feature index (t,)); -inf AP where no positives."""
    best_ap_t = torch.full((positives_nt.shape[1],), -torch.inf, dtype=torch.float64, device=acts_nd.device)
    best_feature_t = torch.zeros(positives_nt.shape[1], dtype=torch.int64, device=acts_nd.device)
    n_features = 0
    for start, ap_tb, _ in _ap_blocks(feature_set, acts_nd, positives_nt, max_score_elements):
        n_features = start + ap_tb.shape[1]
        # argmax takes the first of tied maxima, and only a strictly better block replaces the best
        # so far: a tie always goes to the lowest feature index
        block_index_t = ap_tb.argmax(1)
        block_best_t = ap_tb.gather(1, block_index_t[:, None])[:, 0]
        better_t = block_best_t > best_ap_t
        best_ap_t = torch.where(better_t, block_best_t, best_ap_t)
        best_feature_t = torch.where(better_t, block_index_t + start, best_feature_t)
    return n_features, best_ap_t, best_feature_t


@dataclass(frozen=True)
class _ScoredPatches:
    """Patch tokens of the fitting images, of the scored images, and the scored patches' targets."""

    fit_nd: torch.Tensor
    score_nd: torch.Tensor
    positives_nt: torch.Tensor


def _scored_patches(store: ActivationStore, stored: StoredLayer, benchmark: Benchmark, options: DiscoveryOptions) -> _ScoredPatches:
    patches = _patch_token_slice(store, stored)
    if store.n_images < 2:
        raise ScoringError(f"trait discovery needs at least 2 images (one to fit, one to score); the store has {store.n_images}")
    sources = [benchmark.resolve(image.source) for image in store.images]
    geometry = mask_geometry(store.manifest.get("preprocess"))
    trait_labels = list(benchmark.trait_labels.values())
    n_labels = max(trait_labels, default=1) + 1
    fit_parts, score_parts, positive_parts = [], [], []
    for indices_b, tokens_btd in store.iter_images(stored.name):
        patches_bpd = torch.from_numpy(tokens_btd[:, patches].astype(np.float32))
        scored_b = torch.from_numpy(indices_b % 2 == 1)
        fit_parts.append(patches_bpd[~scored_b].flatten(0, 1))
        score_parts.append(patches_bpd[scored_b].flatten(0, 1))
        for image in indices_b[indices_b % 2 == 1]:
            coverage_pl = patch_coverage(geometry(benchmark.annotation(sources[image])), stored.layout.grid_hw, n_labels)
            positive_parts.append(torch.from_numpy(patch_positives(coverage_pl, trait_labels, options.min_coverage)))
    device = Workers(0, 1).device(options.device)
    return _ScoredPatches(torch.cat(fit_parts).to(device), torch.cat(score_parts).to(device), torch.cat(positive_parts).to(device))


@torch.no_grad()
def trait_discovery(feature_sets: Mapping[str, FeatureSet], store: ActivationStore, layer: str | int,
                    benchmark: Benchmark, options: DiscoveryOptions = DiscoveryOptions()) -> TraitDiscovery:
    """Best single feature per trait for each feature set, on the same patches and targets.

    One ordered pass over the layer's patch tokens. Images alternate: even-numbered store images fit
    the feature sets that learn from data (PCA, k-means), odd-numbered ones are scored, for every
    set alike, so no baseline is scored on the tokens it was fitted to. (An SAE trained on the whole
    store has seen the scored images; the baselines have not.) Targets come from each scored image's
    annotation, moved through the store's preprocessing onto the patch grid, by the definition the
    feature report's label APs use too (:mod:`traitlens.features.patch_positives`).
    """
    stored = store.layer(layer)
    scored = _scored_patches(store, stored, benchmark, options)
    fit_nd, score_nd, positives_nt = scored.fit_nd, scored.score_nd, scored.positives_nt
    n_positive = tuple(int(count) for count in positives_nt.sum(0))
    found_t = [count > 0 for count in n_positive]
    n_features, best_feature, best_ap = {}, {}, {}
    for name, feature_set in feature_sets.items():
        n_features[name], ap_t, feature_t = _best_features(feature_set.fit(fit_nd), score_nd, positives_nt, options.max_score_elements)
        best_ap[name] = tuple(float(ap) if found else None for ap, found in zip(ap_t.tolist(), found_t, strict=True))
        best_feature[name] = tuple(int(index) if found else None for index, found in zip(feature_t.tolist(), found_t, strict=True))
    n_scored = store.n_images // 2
    return TraitDiscovery(tuple(benchmark.trait_labels), n_positive, len(score_nd), store.n_images - n_scored, n_scored,
                          n_features, best_feature, best_ap)



@torch.no_grad()
def trait_feature_ap(feature_set: FeatureSet, store: ActivationStore, layer: str | int, benchmark: Benchmark,
                     options: DiscoveryOptions = DiscoveryOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """Every feature's average precision for every trait, (traits, features) float64 (NaN for a
    trait without positive patches), and each feature's firing rate (share of positive scores),
    (features,), on the scored patches of :func:`trait_discovery`; the set is fitted on the others."""
    scored = _scored_patches(store, store.layer(layer), benchmark, options)
    fitted = feature_set.fit(scored.fit_nd)
    ap_blocks, rate_blocks = [], []
    for _, ap_tb, rate_b in _ap_blocks(fitted, scored.score_nd, scored.positives_nt, options.max_score_elements):
        ap_blocks.append(ap_tb)
        rate_blocks.append(rate_b)
    ap_tf = torch.cat(ap_blocks, dim=1)
    ap_tf[scored.positives_nt.sum(0) == 0] = torch.nan
    return ap_tf.cpu(), torch.cat(rate_blocks).cpu()


@dataclass(frozen=True)
class DiscoveryConfig:
    """``specimens score discovery``: the store ``acts`` extracted from the benchmark ``data``,
    the SAE directory ``sae`` (None scores the baselines alone) and the folder ``out``."""

    acts: Path
    data: Path
    out: Path
    sae: Path | None = None
    layer: str | None = None
    """Default: the layer the SAE was trained on, else the store's last layer."""
    options: DiscoveryOptions = DiscoveryOptions()


def score_discovery(config: DiscoveryConfig) -> dict[str, Any]:
    """Trait discovery of an SAE (when given) and the neuron, PCA and k-means baselines on a stored
    layer; writes ``out/discovery.json`` and ``out/discovery.md`` and returns what the JSON holds.
    ``out`` is written into, not claimed (:func:`traitlens.specimens.benchmark.claim_score_folder`).
    """
    acts, data, layer, sae, out, options = config.acts, config.data, config.layer, config.sae, config.out, config.options
    store = ActivationStore(acts)
    benchmark = read_benchmark(data)
    loaded = None if sae is None else load_sae_with_config(sae, device=Workers(0, 1).device(options.device))
    default_layer: str | int = -1 if loaded is None else loaded[1].get("layer", -1)
    stored = store.layer(layer if layer is not None else default_layer)
    feature_sets: dict[str, FeatureSet] = {}
    if loaded is not None:
        model = loaded[0]
        if model.config.d_in != stored.width:
            raise LayerError(f"the SAE at {sae} reads {model.config.d_in}-dim tokens but layer {stored.name} of {acts} "
                             f"is {stored.width}-dim; pick the SAE's layer")
        feature_sets["sae"] = SAEFeatures(model)
    feature_sets["neurons"] = NeuronFeatures()
    feature_sets["pca"] = PCAFeatures(options.pca_components)
    feature_sets["kmeans"] = KMeansFeatures(options.kmeans_clusters, options.kmeans_iterations, options.seed)
    discovery = trait_discovery(feature_sets, store, stored.name, benchmark, options)
    rows = discovery.rows()
    result = {"acts": str(acts), "data": str(data), "layer": stored.name, "sae": None if sae is None else str(sae),
              "options": asdict(options), "n_images_fit": discovery.n_images_fit, "n_images_scored": discovery.n_images_scored,
              "n_patches": discovery.n_patches, "n_features": discovery.n_features, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "discovery.json", result)
    write_text(out / "discovery.md", "\n".join([
        "# Trait discovery", "",
        f"Layer `{stored.name}` of `{acts}`: {discovery.n_patches} patches of the {discovery.n_images_scored} scored images "
        f"(the odd-numbered store images); PCA and k-means fitted on the other {discovery.n_images_fit}. Each cell is the "
        "patch-level average precision of the set's best single feature for the trait, where "
        f"{describe_positives(options.min_coverage)}; `chance` is the trait's positive rate, the AP of a random feature.", "",
        markdown_table(rows, ["trait", "positives", "chance", *feature_sets]),
    ]))
    return result
