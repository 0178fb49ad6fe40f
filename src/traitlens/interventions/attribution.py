"""``traitlens attribute``: which SAE latents separate a class from its look-alikes.

The explained score is Finer-CAM's comparative score ``S = y_A - gamma * mean(y_refs)`` (see
:mod:`traitlens.explain.contrast`), attributed to the SAE's latents at its layer by gradient x
activation. The tokens the SAE reads are spliced as ``x + (decode(z) - decode(z).detach())``: the
forward value is exactly ``x`` (the model computes what it always does, reconstruction error
included), while the gradient of ``S`` reaches the latents ``z``. Per image and latent the
attribution is ``sum over tokens of z * dS/dz``. Because ``decode`` is affine, the latents'
attributions plus the error term's (``x - decode(z)``) and the decoder bias's (``decode(0)``) add up
to the layer's own gradient x input, ``sum over tokens of x * dS/dx``. That sum is ``S`` (less
the later biases) only where ``S`` is linear in the layer; tokens read through a LayerNorm add up
to about zero (it ignores their scale), so read each latent's number as the first-order change of
``S`` when the latent is scaled, not as a share of ``S``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from traitlens.atomic import atomic_write_json
from traitlens.backbones import Backbone, TokenSelection
from traitlens.checks import check_float
from traitlens.data import ImageSource, open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.explain.config import ClassKey, ExplainError
from traitlens.explain.contrast import check_class_indices, class_coefficients
from traitlens.heads.linear_head import head_sha256
from traitlens.interventions.edits import InterventionError
from traitlens.interventions.setup import (
    check_counts,
    check_out_dir,
    claim_out_dir,
    config_dict,
    load_sae_on_model,
    resolve_classes,
)
from traitlens.progress import BatchProgress, fixed_batches
from traitlens.sae.evaluation import splice
from traitlens.sae.model import SparseAutoencoder
from traitlens.tables import markdown_table, write_text
from traitlens.version import __version__

FORMAT = "traitlens.attribution"
RESULT = "attribution.json"
REPORT = "attribution.md"
ImageChoice = Literal["target", "all"]
IMAGE_CHOICES: tuple[ImageChoice, ...] = ("target", "all")
RANKED_COLUMNS = ("latent", "mean_attribution", "active_share", "mean_activation")

log = logging.getLogger(__name__)


@dataclass
class LatentAttribution:
    """One batch's attribution of the comparative score. ``attribution_bw`` (b, width): each
    latent's ``sum over tokens of z * dS/dz`` (zero where the latent is inactive); ``error_b`` and
    ``bias_b`` (b,): the same for the SAE's reconstruction error and its decoder bias;
    ``score_b`` (b,): the score itself; ``activation_bw`` (b, width): each latent's mean over the
    image's tokens; ``active_bw`` (b, width) bool: whether it fires on any of them."""

    attribution_bw: torch.Tensor
    error_b: torch.Tensor
    bias_b: torch.Tensor
    score_b: torch.Tensor
    activation_bw: torch.Tensor
    active_bw: torch.Tensor


@dataclass
class _Splice:
    latents_nw: torch.Tensor
    tokens_nd: torch.Tensor
    error_nd: torch.Tensor
    bias_1d: torch.Tensor


def latent_attribution(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection,
                       pixels_bchw: torch.Tensor, targets_b: torch.Tensor, refs_bk: torch.Tensor,
                       gamma: float = 1.0) -> LatentAttribution:
    """Gradient x activation of ``S_b = y[target_b] - gamma * mean(y[refs_bk[b]])`` on the latents
    of ``sae`` over the ``selection`` tokens of ``layer``: one forward and one backward of the
    batch sum (images are independent). ``refs_bk`` (b, k) may have k = 0 (the target alone)."""
    layout = backbone.layer(layer).layout
    dtype = sae.W_dec.dtype
    splices: list[_Splice] = []

    def replace(x_nd: torch.Tensor) -> torch.Tensor:
        tokens_nd = x_nd.detach().to(sae.W_dec.device, dtype).requires_grad_()
        with torch.no_grad():
            latents_nw = sae.encode(tokens_nd)
            bias_1d = sae.decode(torch.zeros_like(latents_nw[:1]))
        latents_nw.requires_grad_()
        reconstruction_nd = sae.decode(latents_nw)
        splices.append(_Splice(latents_nw, tokens_nd, tokens_nd.detach() - reconstruction_nd.detach(), bias_1d))
        # adds an exact zero: the forward value is x to the bit, the gradient reaches the latents
        return (tokens_nd + (reconstruction_nd - reconstruction_nd.detach())).to(x_nd.device)

    with torch.enable_grad(), backbone.edit(layer, lambda tokens_btd: splice(tokens_btd, layout, selection, replace)):
        logits_bc = backbone.forward(pixels_bchw)
        targets_b, refs_bk = targets_b.to(logits_bc.device, torch.int64), refs_bk.to(logits_bc.device, torch.int64)
        check_class_indices(targets_b, logits_bc.shape[1], "target class")
        check_class_indices(refs_bk, logits_bc.shape[1], "reference class")
        score_b = (logits_bc * class_coefficients(targets_b, refs_bk, gamma, logits_bc.shape[1], logits_bc.dtype)).sum(1)
    if len(splices) != 1:
        raise InterventionError(f"layer {layer} ran {len(splices)} times in one forward pass of {backbone.spec}; "
                                "attribution needs a layer that runs once")
    spliced = splices[0]
    grad_latents_nw, grad_tokens_nd = torch.autograd.grad(score_b.sum(), [spliced.latents_nw, spliced.tokens_nd],
                                                          allow_unused=True, materialize_grads=True)
    if not bool(grad_tokens_nd.any()):
        log.warning("the explained score does not depend on the %s tokens of layer %s (zero gradients)", selection, layer)
    b, width = len(pixels_bchw), sae.config.width
    latents_btw = spliced.latents_nw.detach().view(b, -1, width)
    return LatentAttribution(
        attribution_bw=(latents_btw * grad_latents_nw.view(b, -1, width)).sum(1),
        error_b=(spliced.error_nd * grad_tokens_nd).view(b, -1).sum(1),
        bias_b=(spliced.bias_1d * grad_tokens_nd).view(b, -1).sum(1),
        score_b=score_b.detach(),
        activation_bw=latents_btw.mean(1),
        active_bw=(latents_btw != 0).any(1),
    )


@dataclass(frozen=True)
class AttributionConfig:
    """Which latents of the SAE at ``sae`` separate class ``target`` from ``refs`` in the model's
    eyes, averaged over ``images``: ``"target"`` (the images labelled with the target class) or
    ``"all"``; the first ``max_images`` of them. ``layer`` and ``tokens`` default to those the SAE
    was trained on; ``top`` latents are ranked each way. ``overwrite`` replaces an earlier
    ``traitlens attribute`` result in ``out``."""

    model: str
    sae: Path
    data: Path
    target: ClassKey
    refs: tuple[ClassKey, ...]
    gamma: float = 1.0
    layer: str | None = None
    tokens: TokenSelection | None = None
    images: ImageChoice = "target"
    batch_size: int = 16
    max_images: int | None = None
    top: int = 20
    out: Path | None = None
    weights: Path | None = None
    pretrained: bool = True
    head: Path | None = None
    """A head directory (``traitlens probe`` or ``heads train``) whose classes replace the model's own."""
    device: str = "auto"
    show_progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.refs:
            raise InterventionError("attribution needs at least one reference class (--refs) to compare the target with")
        if self.images not in IMAGE_CHOICES:
            raise InterventionError(f"--average-over must be one of {', '.join(IMAGE_CHOICES)}, got {self.images!r}")
        check_counts(batch_size=self.batch_size, top=self.top, max_images=self.max_images)
        # a negative gamma would add the references' evidence instead of removing it
        check_float(self.gamma, "--gamma", InterventionError)


@dataclass
class AttributionTotals:
    """float64 sums of :class:`LatentAttribution` over images."""

    width: int
    n_images: int = 0
    score: float = 0.0
    error: float = 0.0
    bias: float = 0.0
    attribution_w: torch.Tensor = field(init=False)
    activation_w: torch.Tensor = field(init=False)
    active_w: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.attribution_w, self.activation_w, self.active_w = (torch.zeros(self.width, dtype=torch.float64) for _ in range(3))

    def add(self, sums: dict[str, torch.Tensor]) -> None:
        """Add one batch's :func:`batch_sums`."""
        self.n_images += int(sums["n_images"])
        self.score += float(sums["score"])
        self.error += float(sums["error"])
        self.bias += float(sums["bias"])
        self.attribution_w += sums["attribution_w"]
        self.activation_w += sums["activation_w"]
        self.active_w += sums["active_w"]


SUM_NAMES = ("n_images", "score", "error", "bias", "attribution_w", "activation_w", "active_w")


def batch_sums(batch: LatentAttribution) -> dict[str, torch.Tensor]:
    """One batch's float64 sums over its images (on the CPU): what totals add, and what a finished
    batch saves to resume from."""
    return {"n_images": torch.tensor(len(batch.score_b)), "score": batch.score_b.double().sum().cpu(),
            "error": batch.error_b.double().sum().cpu(), "bias": batch.bias_b.double().sum().cpu(),
            "attribution_w": batch.attribution_bw.double().sum(0).cpu(), "activation_w": batch.activation_bw.double().sum(0).cpu(),
            "active_w": batch.active_bw.double().sum(0).cpu()}


def iter_attribution_sums(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection,
                          source: ImageSource, indices: Sequence[int], target: int, refs: Sequence[int], gamma: float = 1.0,
                          batch_size: int = 16) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`batch_sums` of :func:`latent_attribution` of ``y[target] - gamma * mean(y[refs])``,
    batch by batch over the images ``indices`` of ``source``."""
    refs_1k = torch.tensor([list(refs)])
    for batch in pixel_batches(source, backbone.preprocess, batch_size, indices):
        b = len(batch.indices)
        yield batch_sums(latent_attribution(backbone, sae, layer, selection, batch.pixels_bchw.to(backbone.device),
                                            torch.full((b,), target), refs_1k.expand(b, -1), gamma))


def attribute_images(backbone: Backbone, sae: SparseAutoencoder, layer: str, selection: TokenSelection, source: ImageSource,
                     indices: Sequence[int], target: int, refs: Sequence[int], gamma: float = 1.0, batch_size: int = 16,
                     show_progress: bool = False) -> AttributionTotals:
    """:func:`latent_attribution` of ``y[target] - gamma * mean(y[refs])`` summed over the images
    ``indices`` of ``source``, batch by batch."""
    totals = AttributionTotals(sae.config.width)
    with tqdm(total=len(indices), unit="img", desc="attribute", disable=not show_progress) as bar:
        for sums in iter_attribution_sums(backbone, sae, layer, selection, source, indices, target, refs, gamma, batch_size):
            totals.add(sums)
            bar.update(int(sums["n_images"]))
    return totals


def _classes(config: AttributionConfig, class_names: Sequence[str]) -> tuple[int, list[int]]:
    target = resolve_classes([config.target], class_names, "target class")[0]
    refs = resolve_classes(config.refs, class_names, "reference class")
    try:
        check_class_indices(torch.tensor([target]), len(class_names), "target class")
        check_class_indices(torch.tensor(refs), len(class_names), "reference class")
    except ExplainError as error:
        raise InterventionError(str(error)) from error
    if target in refs:
        raise InterventionError(f"the target class {class_names[target]!r} is also among the references")
    return target, refs


def _ranked(mean_w: torch.Tensor, share_w: torch.Tensor, activation_w: torch.Tensor, top: int,
            sign: int) -> list[dict[str, Any]]:
    """The ``top`` latents whose mean attribution has ``sign``, strongest first."""
    order = (-sign * mean_w).argsort(stable=True)[:top]
    return [{"latent": int(w), "mean_attribution": float(mean_w[w]), "active_share": float(share_w[w]),
             "mean_activation": float(activation_w[w])} for w in order if sign * float(mean_w[w]) > 0]


def _report(result: dict[str, Any]) -> str:
    lines = [f"# Latents that separate {result['target']} from {', '.join(result['refs'])}", "",
             f"Score `y[{result['target']}] - {result['config']['gamma']:g} * mean(y[refs])` attributed to the SAE "
             f"latents at {result['layer']} ({result['tokens']} tokens), gradient x activation, mean over "
             f"{result['n_images']} images ({result['images']}).", "",
             f"- mean score: {result['mean_score']:.4f}",
             f"- mean attribution: latents {result['mean_latent_attribution']:.4f}, reconstruction error "
             f"{result['mean_error_attribution']:.4f}, decoder bias {result['mean_bias_attribution']:.4f}", "",
             f"## Evidence for {result['target']}", "", markdown_table(result["for_target"], RANKED_COLUMNS),
             f"## Evidence for {', '.join(result['refs'])}", "", markdown_table(result["for_refs"], RANKED_COLUMNS)]
    return "\n".join(lines)


def comparative_attribution(config: AttributionConfig) -> dict[str, Any]:
    """Mean attribution of each latent over the chosen images, the latents ranked both ways
    (``for_target``: positive, evidence for the target over the references; ``for_refs``:
    negative), with each latent's share of images it fires on and its mean activation per token;
    with ``out``, write ``attribution.json`` (every latent's means too) and ``attribution.md``."""
    check_out_dir(config.out)
    placed = load_sae_on_model(config.model, config.sae, weights=config.weights, pretrained=config.pretrained,
                               layer=config.layer, tokens=config.tokens, device=config.device, head=config.head)
    backbone, sae, layer, tokens = placed.backbone, placed.sae, placed.layer, placed.tokens
    if backbone.class_names is None:
        raise InterventionError(f"{backbone.spec} has no classification head with known classes to attribute")
    target, refs = _classes(config, backbone.class_names)
    source = open_image_source(config.data)
    indices = [index for index, record in enumerate(source.records)
               if config.images == "all" or record.label == backbone.class_names[target]]
    if not indices:
        which = "" if config.images == "all" else f" labelled {backbone.class_names[target]!r} (use --average-over all)"
        raise InterventionError(f"no images{which} in {config.data}")
    indices = indices[: config.max_images]
    claim_out_dir(config.out, "attribute", config.overwrite)
    progress = None if config.out is None else BatchProgress(
        config.out, "attribution results", _job_identity(config, backbone, source, indices, layer, tokens), InterventionError)
    finished = None if progress is None or config.out is None else progress.finished(config.out / RESULT, FORMAT)
    if finished is not None:
        return {key: value for key, value in finished.items() if key != "latents"}
    totals = _resumed_totals(config, progress, backbone, sae, layer, tokens, source, indices, target, refs)
    n = totals.n_images
    mean_w, share_w, activation_w = totals.attribution_w / n, totals.active_w / n, totals.activation_w / n
    result: dict[str, Any] = {
        "format": FORMAT, "version": 1, "software": {"traitlens": __version__}, "config": config_dict(config),
        "layer": layer, "tokens": tokens, "target": backbone.class_names[target], "refs": [backbone.class_names[r] for r in refs],
        "images": config.images, "n_images": n, "mean_score": totals.score / n,
        "mean_latent_attribution": float(mean_w.sum()), "mean_error_attribution": totals.error / n,
        "mean_bias_attribution": totals.bias / n,
        "for_target": _ranked(mean_w, share_w, activation_w, config.top, 1),
        "for_refs": _ranked(mean_w, share_w, activation_w, config.top, -1),
    }
    if config.out is not None and progress is not None:
        # the JSON, written last, marks a finished pair
        result["job"] = progress.job
        write_text(config.out / REPORT, _report(result))
        atomic_write_json(config.out / RESULT, {**result, "latents": {
            "mean_attribution": mean_w.tolist(), "active_share": share_w.tolist(), "mean_activation": activation_w.tolist()}})
        progress.finish()
    return result


def _job_identity(config: AttributionConfig, backbone: Backbone, source: ImageSource, indices: Sequence[int], layer: str,
                  tokens: TokenSelection) -> dict[str, Any]:
    """Everything that decides the sums; a resumed run must match it (the batch size too: batches
    are the unit it resumes from)."""
    from traitlens.features import sae_weights_sha256

    job = config_dict(config)
    for name in ("out", "overwrite", "show_progress"):
        del job[name]
    job.update(weights_fingerprint=backbone.weights_fingerprint(), sae_sha256=sae_weights_sha256(config.sae),
               dataset_fingerprint=source.fingerprint(), n_images=len(indices), layer_used=layer, tokens_used=tokens,
               traitlens_version=__version__)
    if config.head is not None:  # the path alone would take a head replaced in place for the same
        job["head_sha256"] = head_sha256(config.head)
    return job


def _resumed_totals(config: AttributionConfig, progress: BatchProgress | None, backbone: Backbone, sae: SparseAutoencoder,
                    layer: str, tokens: TokenSelection, source: ImageSource, indices: Sequence[int], target: int,
                    refs: Sequence[int]) -> AttributionTotals:
    """The sums over ``indices``, batch by batch: the batches a killed run finished are read back
    (added in the same order, so the sums are the same to the bit) and the others computed."""
    batches = [[indices[i] for i in batch] for batch in fixed_batches(len(indices), config.batch_size)]
    saved = [None if progress is None else _saved_sums(progress, number, len(batch), sae.config.width)
             for number, batch in enumerate(batches)]
    todo = [number for number, sums in enumerate(saved) if sums is None]
    todo_images = [index for number in todo for index in batches[number]]
    with tqdm(total=len(indices), initial=len(indices) - len(todo_images), unit="img", desc="attribute",
              disable=not config.show_progress) as bar:
        computed = iter_attribution_sums(backbone, sae, layer, tokens, source, todo_images, target, refs, config.gamma,
                                         config.batch_size)
        for number, sums in zip(todo, computed, strict=True):
            if progress is not None:
                progress.save_tensors(number, sums)
            saved[number] = sums
            bar.update(len(batches[number]))
    totals = AttributionTotals(sae.config.width)
    for batch_sum in saved:
        assert batch_sum is not None  # every batch is read back or computed above
        totals.add(batch_sum)
    return totals


def _saved_sums(progress: BatchProgress, batch: int, n_images: int, width: int) -> dict[str, torch.Tensor] | None:
    sums = progress.load_tensors(batch)
    if sums is None:
        return None
    shapes = {"n_images": (), "score": (), "error": (), "bias": (), "attribution_w": (width,), "activation_w": (width,),
              "active_w": (width,)}
    if set(sums) != set(SUM_NAMES) or any(tuple(sums[name].shape) != shape for name, shape in shapes.items()) \
            or int(sums["n_images"]) != n_images:
        raise progress.damaged(progress.path(batch, ".safetensors"), "not the sums of its images")
    return sums
