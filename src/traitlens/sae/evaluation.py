"""``traitlens evaluate``: how well a saved SAE reconstructs a stored layer and, given the model,
how much of the model's behaviour survives when that layer's output is replaced by the SAE's
reconstruction.

Reconstruction metrics stream over every stored token in order. NMSE is the squared error over
the squared distance to the dataset-mean vector (the store's own statistics), both accumulated in
float64. Downstream fidelity splices the reconstruction into the forward pass through the backbone's
``edit`` (only the token kind the store holds: patches, CLS or all) and compares the head's output
with the clean run and with a zero-ablated run; ``fraction_recovered`` is
``1 - KL(clean || spliced) / KL(clean || zero-ablated)``, the KL analogue of SAELens' "CE loss
recovered" (their clean CE becomes a KL of 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from traitlens.atomic import atomic_write_json
from traitlens.backbones import Backbone, TokenSelection, load_backbone
from traitlens.backbones.layout import TokenLayout
from traitlens.data import UnreadableImageError, open_image_source
from traitlens.distributed import Workers
from traitlens.errors import TraitlensError
from traitlens.heads import load_head_backbone
from traitlens.output_folder import check_output_folder, claim_output_folder
from traitlens.sae.config import check_int
from traitlens.sae.io import load_sae_with_config
from traitlens.sae.layer import stored_sae_layer
from traitlens.sae.metrics import DENSE_FREQUENCY
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ActivationStore
from traitlens.store.manifest import StoredLayer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


class EvaluationError(TraitlensError):
    """An SAE cannot be evaluated as asked."""


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate. ``layer`` defaults to the layer the SAE was trained on (from its config);
    ``model`` adds downstream fidelity over the first ``max_images`` stored images (all by default),
    measured on the model's own head or, with ``head``, on a probe saved by ``traitlens probe``.
    ``out``, a folder, gets ``metrics.json``; a finished one is replaced only with ``overwrite``."""

    sae: Path
    acts: Path
    out: Path | None = None
    layer: str | None = None
    model: str | None = None
    weights: Path | None = None
    pretrained: bool = True
    batch_size: int = 4096
    image_batch_size: int = 16
    max_images: int | None = None
    strict: bool = False
    device: str = "auto"
    show_progress: bool = True
    head: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1, EvaluationError)
        check_int("image_batch_size", self.image_batch_size, 1, EvaluationError)
        if self.max_images is not None:
            check_int("max_images", self.max_images, 1, EvaluationError)
        if self.head is not None and self.model is None:
            raise EvaluationError("--head needs --model (the store's model, which the probe reads)")


@dataclass
class _ReconstructionTotals:
    """Running float64 sums over tokens, enough for NMSE, explained variance and latent statistics."""

    mean_d: torch.Tensor
    width: int
    n_tokens: int = 0
    n_nonfinite: int = 0
    squared_error: float = 0.0
    squared_spread: float = 0.0
    active_total: int = 0
    fires_w: torch.Tensor = field(init=False)
    activation_sum_w: torch.Tensor = field(init=False)
    x_sum_d: torch.Tensor = field(init=False)
    x_sumsq_d: torch.Tensor = field(init=False)
    residual_sum_d: torch.Tensor = field(init=False)
    residual_sumsq_d: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        d = self.mean_d.shape[0]
        self.fires_w = torch.zeros(self.width, dtype=torch.int64)
        self.activation_sum_w = torch.zeros(self.width, dtype=torch.float64)
        self.x_sum_d, self.x_sumsq_d = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        self.residual_sum_d, self.residual_sumsq_d = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)

    def add(self, x_nd: torch.Tensor, latents_nw: torch.Tensor, recon_nd: torch.Tensor) -> None:
        x64_nd, residual_nd = x_nd.double(), recon_nd.double() - x_nd.double()
        active_nw = latents_nw != 0
        self.n_tokens += x_nd.shape[0]
        self.squared_error += float(residual_nd.square().sum())
        self.squared_spread += float((x64_nd - self.mean_d).square().sum())
        self.active_total += int(active_nw.sum())
        self.fires_w += active_nw.sum(0).cpu()
        self.activation_sum_w += latents_nw.double().sum(0).cpu()
        self.x_sum_d += x64_nd.sum(0).cpu()
        self.x_sumsq_d += x64_nd.square().sum(0).cpu()
        self.residual_sum_d += residual_nd.sum(0).cpu()
        self.residual_sumsq_d += residual_nd.square().sum(0).cpu()

    def _total_variance(self, sum_d: torch.Tensor, sumsq_d: torch.Tensor) -> float:
        n = self.n_tokens
        return float((sumsq_d / n - (sum_d / n).square()).clamp_min(0).sum())

    def finish(self) -> dict[str, Any]:
        if self.n_tokens == 0:
            raise EvaluationError("no finite tokens to evaluate")
        frequency_w = self.fires_w.double() / self.n_tokens
        # mean activation over the tokens where the latent fires (0 for a latent that never fires)
        mean_activation_w = self.activation_sum_w / self.fires_w.clamp_min(1).double()
        return {
            "n_tokens": self.n_tokens,
            "n_nonfinite_skipped": self.n_nonfinite,
            "nmse": self.squared_error / max(self.squared_spread, 1e-30),
            "explained_variance": 1.0 - self._total_variance(self.residual_sum_d, self.residual_sumsq_d)
            / max(self._total_variance(self.x_sum_d, self.x_sumsq_d), 1e-30),
            "l0": self.active_total / self.n_tokens,
            "dead_latents": int((self.fires_w == 0).sum()),
            "dense_latents": int((frequency_w > DENSE_FREQUENCY).sum()),
            "dense_threshold": DENSE_FREQUENCY,
            "width": self.width,
            "latent_frequency": frequency_w.tolist(),
            "latent_mean_activation": mean_activation_w.tolist(),
        }


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, store: ActivationStore, layer: StoredLayer, batch_size: int,
                           strict: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """One pass over the layer's tokens in image order (so the float sums, and the metrics, do not
    depend on the store's row order); NaN/Inf tokens are skipped and counted (an error when ``strict``)."""
    device = sae.W_enc.device
    totals = _ReconstructionTotals(torch.from_numpy(store.stats(layer.name).mean_d).double().to(device), sae.config.width)
    progress = tqdm(total=layer.n_tokens, unit="tok", unit_scale=True, desc="reconstruction", disable=not show_progress)
    for shard in store.image_ordered_shards(layer.name):
        for start in range(0, len(shard), batch_size):
            x_nd = torch.from_numpy(np.array(shard[start : start + batch_size], dtype=np.float32)).to(device)
            finite_n = torch.isfinite(x_nd).all(dim=1)
            bad = int((~finite_n).sum())
            if bad:
                if strict:
                    raise EvaluationError(f"{bad} tokens of layer {layer.name} in {store.root} are NaN/Inf (--strict)")
                totals.n_nonfinite += bad
                x_nd = x_nd[finite_n]
            latents_nw, recon_nd = sae(x_nd)
            totals.add(x_nd, latents_nw, recon_nd)
            progress.update(len(finite_n))
    progress.close()
    if totals.n_nonfinite:
        log.warning("skipped %d tokens with NaN/Inf values", totals.n_nonfinite)
    return totals.finish()


def splice(tokens_btd: torch.Tensor, layout: TokenLayout, selection: TokenSelection,
           replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``tokens_btd`` with the tokens named by ``selection`` replaced by ``replace(tokens_nd)``."""
    chosen_btd = layout.select(tokens_btd, selection)
    b, t, d = chosen_btd.shape
    new_btd = replace(chosen_btd.reshape(b * t, d)).reshape(b, t, d).to(tokens_btd.dtype)
    if selection == "all":
        return new_btd
    start = layout.n_prefix if selection == "patch" else 0
    edited_btd = tokens_btd.clone()
    edited_btd[:, start : start + t] = new_btd
    return edited_btd


def _kl_per_image(clean_bc: torch.Tensor, other_bc: torch.Tensor) -> torch.Tensor:
    log_p = clean_bc.double().log_softmax(-1)
    return (log_p.exp() * (log_p - other_bc.double().log_softmax(-1))).sum(-1)


@dataclass
class _DownstreamTotals:
    n_images: int = 0
    kl_spliced: float = 0.0
    kl_zero: float = 0.0
    agree_spliced: int = 0
    agree_zero: int = 0
    n_labeled: int = 0
    correct: dict[str, int] = field(default_factory=lambda: {"clean": 0, "spliced": 0, "zero_ablated": 0})

    def add(self, clean_bc: torch.Tensor, spliced_bc: torch.Tensor, zero_bc: torch.Tensor, labels_b: torch.Tensor) -> None:
        self.n_images += clean_bc.shape[0]
        self.kl_spliced += float(_kl_per_image(clean_bc, spliced_bc).sum())
        self.kl_zero += float(_kl_per_image(clean_bc, zero_bc).sum())
        clean_b = clean_bc.argmax(-1)
        self.agree_spliced += int((spliced_bc.argmax(-1) == clean_b).sum())
        self.agree_zero += int((zero_bc.argmax(-1) == clean_b).sum())
        labeled_b = labels_b >= 0
        self.n_labeled += int(labeled_b.sum())
        for name, logits_bc in (("clean", clean_bc), ("spliced", spliced_bc), ("zero_ablated", zero_bc)):
            self.correct[name] += int((logits_bc.argmax(-1) == labels_b)[labeled_b].sum())

    def finish(self) -> dict[str, Any]:
        if self.n_images == 0:
            raise EvaluationError("no stored images to measure downstream fidelity on")
        n = self.n_images
        kl_spliced, kl_zero = self.kl_spliced / n, self.kl_zero / n
        result: dict[str, Any] = {
            "n_images": self.n_images,
            "kl_spliced": kl_spliced,
            "kl_zero_ablated": kl_zero,
            "fraction_recovered": 1.0 - kl_spliced / kl_zero if kl_zero > 0 else None,
            "top1_agreement_spliced": self.agree_spliced / n,
            "top1_agreement_zero_ablated": self.agree_zero / n,
            "n_labeled": self.n_labeled,
        }
        if self.n_labeled:
            accuracy = {name: count / self.n_labeled for name, count in self.correct.items()}
            result["accuracy"] = accuracy
            gap = accuracy["clean"] - accuracy["zero_ablated"]
            result["accuracy_recovered"] = (accuracy["spliced"] - accuracy["zero_ablated"]) / gap if gap else None
        return result


def _image_batches(store: ActivationStore, max_images: int | None, batch_size: int) -> list[list[int]]:
    n = store.n_images if max_images is None else min(max_images, store.n_images)
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


@torch.no_grad()
def downstream_metrics(sae: SparseAutoencoder, store: ActivationStore, layer: StoredLayer, backbone: Backbone,
                       max_images: int | None = None, image_batch_size: int = 16, show_progress: bool = False) -> dict[str, Any]:
    """Head outputs with the layer clean, replaced by the SAE reconstruction, and zero-ablated,
    over the store's images (re-read from the store's image source)."""
    if backbone.class_names is None:
        raise EvaluationError(f"{backbone.spec} has no classification head with known classes; "
                              "downstream fidelity needs one (leave out --model for reconstruction metrics only)")
    backbone_layer = backbone.layer(layer.name)
    if backbone_layer.width != sae.config.d_in:
        raise EvaluationError(f"layer {layer.name} of {backbone.spec} has width {backbone_layer.width}, the SAE expects {sae.config.d_in}")
    selection: TokenSelection = store.tokens
    if store.dataset.path is None:
        raise EvaluationError(f"the store at {store.root} records no image source; downstream fidelity re-reads its images")
    dataset_path = Path(store.dataset.path)
    if not dataset_path.exists():
        raise EvaluationError(f"the store's images at {dataset_path} are gone; downstream fidelity re-reads them")
    source = open_image_source(dataset_path)
    index_of = {record.source: index for index, record in enumerate(source.records)}
    class_index = {name: index for index, name in enumerate(backbone.class_names)}
    device = backbone.device

    def reconstruct(tokens_nd: torch.Tensor) -> torch.Tensor:
        return sae(tokens_nd.to(sae.W_enc.device).float())[1].to(tokens_nd.device)

    def run_edited(pixels_bchw: torch.Tensor, replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        edit = lambda tokens_btd: splice(tokens_btd, backbone_layer.layout, selection, replace)  # noqa: E731
        with backbone.edit(layer.name, edit):
            return backbone.forward(pixels_bchw)

    totals = _DownstreamTotals()
    batches = _image_batches(store, max_images, image_batch_size)
    for batch in tqdm(batches, unit="batch", desc="downstream", disable=not show_progress):
        pixels, labels = [], []
        for image in batch:
            stored = store.images[image]
            if stored.source not in index_of:
                raise EvaluationError(f"image {stored.source} of the store is no longer in {dataset_path}")
            try:
                pixels.append(backbone.preprocess.image(source.load_image(index_of[stored.source])))
            except UnreadableImageError as error:
                raise EvaluationError(f"{error} (it was readable when the store was made)") from error
            labels.append(class_index.get(stored.label, -1) if stored.label is not None else -1)
        pixels_bchw = torch.stack(pixels).to(device)
        clean_bc = backbone.forward(pixels_bchw)
        spliced_bc = run_edited(pixels_bchw, reconstruct)
        zero_bc = run_edited(pixels_bchw, torch.zeros_like)
        totals.add(clean_bc, spliced_bc, zero_bc, torch.tensor(labels, device=clean_bc.device))
    return totals.finish()


def _check_model_matches_store(backbone: Backbone, store: ActivationStore) -> None:
    stored = store.model
    if backbone.weights_fingerprint() != stored.weights_fingerprint:
        raise EvaluationError(
            f"the weights of {backbone.spec} differ from those the store was extracted with "
            f"({stored.spec}, weights {stored.weights or ('pretrained' if stored.pretrained else 'random-init')}); "
            "pass the same --model, --weights or --random-init"
        )


def _with_head(backbone: Backbone, head_dir: Path, layer: StoredLayer) -> Backbone:
    """The backbone with a probe as its head; the probe must read the SAE's layer or a later one,
    or splicing could not change its logits."""
    with_head = load_head_backbone(backbone, head_dir)
    if layer.name not in with_head.layer_names:
        raise EvaluationError(f"the probe at {head_dir} reads layer {with_head.layer_names[-1]}, before the SAE's layer "
                              f"{layer.name}: splicing the SAE cannot change its logits")
    return with_head


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Measure the SAE; writes the metrics to ``config.out``/metrics.json when given, and returns them."""
    if config.out is not None:
        check_output_folder(config.out, EvaluationError)
    device = Workers(0, 1).device(config.device)
    sae, saved = load_sae_with_config(config.sae, device=device)
    sae.eval()
    store = ActivationStore(config.acts)
    layer = stored_sae_layer(store, saved, sae, config.sae, config.layer, EvaluationError)
    metrics: dict[str, Any] = {
        "sae": str(config.sae), "acts": str(config.acts), "layer": layer.name, "tokens": store.tokens,
        "architecture": sae.config.to_dict(),
    }
    backbone = None
    if config.model is not None:  # load (and fail on a bad spec) before the long pass
        backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
        _check_model_matches_store(backbone, store)
        if config.head is not None:
            backbone = _with_head(backbone, config.head, layer)
            metrics["head"] = str(config.head)
        backbone.to(device)
    if config.out is not None:  # claimed once every input has been read and checked, before the long pass
        claim_output_folder(config.out, "evaluate", overwrite=config.overwrite, own_files=(METRICS_FILE,), error=EvaluationError)
    metrics["reconstruction"] = reconstruction_metrics(sae, store, layer, config.batch_size, config.strict, config.show_progress)
    if backbone is not None:
        metrics["model"] = backbone.spec
        metrics["downstream"] = downstream_metrics(sae, store, layer, backbone, config.max_images,
                                                   config.image_batch_size, config.show_progress)
    if config.out is not None:
        atomic_write_json(config.out / METRICS_FILE, metrics)
    return metrics


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """A few human-readable lines; the JSON file has everything (per-latent arrays included)."""
    recon = metrics["reconstruction"]
    lines = [
        f"SAE {metrics['sae']} on layer {metrics['layer']} ({recon['n_tokens']:,} {metrics['tokens']} tokens)",
        f"  NMSE {_number(recon['nmse'])}   explained variance {_number(recon['explained_variance'])}   L0 {recon['l0']:.2f}",
        f"  latents: {recon['width']:,}, dead {recon['dead_latents']:,}, "
        f"dense (>{recon['dense_threshold']:.0%} of tokens) {recon['dense_latents']:,}",
    ]
    if recon["n_nonfinite_skipped"]:
        lines.append(f"  skipped {recon['n_nonfinite_skipped']:,} NaN/Inf tokens")
    downstream = metrics.get("downstream")
    if downstream is not None:
        lines.append(
            f"  downstream on {downstream['n_images']} images of {metrics['model']}"
            f"{' with the probe ' + metrics['head'] if 'head' in metrics else ''}: KL spliced {_number(downstream['kl_spliced'])}"
            f" vs zero-ablated {_number(downstream['kl_zero_ablated'])}, fraction recovered {_number(downstream['fraction_recovered'])},"
            f" top-1 agreement {downstream['top1_agreement_spliced']:.1%}"
        )
        accuracy = downstream.get("accuracy")
        if accuracy is not None:
            lines.append(
                f"  accuracy on {downstream['n_labeled']} labeled images: clean {accuracy['clean']:.1%},"
                f" spliced {accuracy['spliced']:.1%}, zero-ablated {accuracy['zero_ablated']:.1%}"
            )
    return "\n".join(lines)

