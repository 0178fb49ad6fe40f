"""Faithfulness of heatmaps: does hiding what a heatmap points at change what the model says?

Three perturbation metrics, run as batched tensor code on the model's device for any
:class:`~traitlens.backbones.Backbone` whose ``forward`` returns class logits:

- ``rd_at_k`` — the relative drop of the target-minus-reference confidence when the top-k% pixels
  are masked (Finer-CAM, Zhang et al. 2025);
- ``deletion_auc`` / ``insertion_auc`` — the area under the target probability while pixels are
  removed from the image / put back into a blurred copy, in heatmap order (RISE, Petsiuk et al.
  2018).

Pixels are ranked by decreasing heatmap value; equal values keep row-major pixel order (a stable
sort), so every metric is a deterministic function of its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as tvf

from traitlens.backbones import Backbone
from traitlens.explain.config import ExplainError
from traitlens.explain.contrast import auto_references, check_class_indices

Fill = Literal["blur", "mean", "zero"]
FILLS: tuple[Fill, ...] = ("blur", "mean", "zero")


class FaithfulnessError(ExplainError):
    """Inputs or options of a faithfulness metric are malformed."""


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Options of the faithfulness metrics.

    ``percents``: the k of RD@k, each in (0, 100]. ``steps``: equal chunks of pixels the deletion
    and insertion curves move through (``steps + 1`` points). ``rd_fill``, ``deletion_fill``,
    ``insertion_fill``: what stands in for hidden pixels (see :func:`fill_pixels`); insertion
    starts from its fill. ``blur_sigma``: the ``blur`` fill's Gaussian standard deviation in
    pixels at model input resolution. ``max_batch``: most images per forward.
    """

    percents: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0)
    steps: int = 50
    rd_fill: Fill = "zero"
    deletion_fill: Fill = "zero"
    insertion_fill: Fill = "blur"
    blur_sigma: float = 5.0
    max_batch: int = 64

    def __post_init__(self) -> None:
        if not self.percents or not all(0 < k <= 100 for k in self.percents):
            raise FaithfulnessError(f"percents for RD@k must be in (0, 100], got {list(self.percents)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise FaithfulnessError(f"steps must be a positive integer, got {self.steps!r}")
        for name, fill in (("rd_fill", self.rd_fill), ("deletion_fill", self.deletion_fill),
                           ("insertion_fill", self.insertion_fill)):
            if fill not in FILLS:
                raise FaithfulnessError(f"unknown {name} {fill!r}; choose from {', '.join(FILLS)}")
        if not self.blur_sigma > 0:
            raise FaithfulnessError(f"blur_sigma must be positive, got {self.blur_sigma}")
        if self.max_batch < 1:
            raise FaithfulnessError(f"max_batch must be at least 1, got {self.max_batch}")


def fill_pixels(pixels_bchw: torch.Tensor, fill: Fill, blur_sigma: float = 5.0) -> torch.Tensor:
    """What hidden pixels are replaced by, (b, c, h, w) like the preprocessed ``pixels_bchw``.

    ``zero``: zeros in normalized pixel space, i.e. the normalization's dataset-mean colour.
    ``mean``: each image's own mean colour (per channel, over all its pixels).
    ``blur``: the image under a Gaussian blur of ``blur_sigma`` pixels (kernel ±3σ, cut to the
    image size, reflected at the borders): colours stay, detail goes. Normalization is affine per
    channel, so blurring normalized pixels equals normalizing blurred ones.
    """
    if fill == "zero":
        return torch.zeros_like(pixels_bchw)
    if fill == "mean":
        return pixels_bchw.mean(dim=(2, 3), keepdim=True).expand_as(pixels_bchw).clone()
    if fill == "blur":
        # reflect padding needs a radius smaller than the image side
        radius = min(math.ceil(3 * blur_sigma), min(pixels_bchw.shape[-2:]) - 1)
        return tvf.gaussian_blur(pixels_bchw, [2 * radius + 1] * 2, [blur_sigma] * 2)
    raise FaithfulnessError(f"unknown fill {fill!r}; choose from {', '.join(FILLS)}")


def _check_inputs(
    backbone: Backbone, pixels_bchw: torch.Tensor, heatmaps_bhw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both on the model's device (heatmaps as float64), after checking that their shapes agree."""
    if pixels_bchw.ndim != 4 or pixels_bchw.numel() == 0:
        raise FaithfulnessError(f"pixels must be a non-empty batch (b, c, h, w), got shape {tuple(pixels_bchw.shape)}")
    batch, _, height, width = pixels_bchw.shape
    if tuple(heatmaps_bhw.shape) != (batch, height, width):
        raise FaithfulnessError(
            f"heatmaps must be (b, h, w) = {(batch, height, width)} to match the pixels, got {tuple(heatmaps_bhw.shape)}"
        )
    heat = heatmaps_bhw.to(backbone.device, torch.float64)
    if not bool(torch.isfinite(heat).all()):
        raise FaithfulnessError("heatmaps must be finite (no NaN or Inf)")
    return pixels_bchw.to(backbone.device), heat


def _pixel_ranks(heatmaps_bhw: torch.Tensor) -> torch.Tensor:
    """(b, h, w) int64: each pixel's place in the order of decreasing heat, ties in row-major order."""
    flat_bn = heatmaps_bhw.flatten(1)
    order_bn = torch.sort(flat_bn, dim=1, descending=True, stable=True).indices
    positions_bn = torch.arange(flat_bn.shape[1], device=flat_bn.device).expand_as(order_bn)
    return torch.empty_like(order_bn).scatter_(1, order_bn, positions_bn).view_as(heatmaps_bhw)


def _probabilities(backbone: Backbone, pixels_nchw: torch.Tensor) -> torch.Tensor:
    """(n, classes) float32 softmax of the model's logits."""
    logits = backbone.forward(pixels_nchw)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise FaithfulnessError(f"{backbone.spec} must return class logits (b, classes) for faithfulness metrics, got {got}")
    return logits.float().softmax(dim=-1)


def _clean_probabilities(backbone: Backbone, pixels_bchw: torch.Tensor, max_batch: int) -> torch.Tensor:
    return torch.cat([_probabilities(backbone, chunk) for chunk in pixels_bchw.split(max_batch)])


def _classes(
    given: torch.Tensor | Sequence[int] | None, fallback_b: torch.Tensor, n_classes: int, name: str
) -> torch.Tensor:
    """(b,) int64 class indices: ``given`` checked against the model's classes, else the fallback."""
    if given is None:
        return fallback_b
    classes = torch.as_tensor(given, device=fallback_b.device)
    if classes.shape != fallback_b.shape or classes.is_floating_point() or classes.is_complex():
        raise FaithfulnessError(f"{name} must be {fallback_b.numel()} integer class indices, got {tuple(classes.shape)} {classes.dtype}")
    check_class_indices(classes, n_classes, name)
    return classes.long()


def _composite_probabilities(
    backbone: Backbone,
    base_bchw: torch.Tensor,
    replacement_bchw: torch.Tensor,
    ranks_bhw: torch.Tensor,
    counts_s: torch.Tensor,
    classes_bn: torch.Tensor,
    max_batch: int,
) -> torch.Tensor:
    """(b, s, n) probabilities of ``classes_bn`` for each image and each count: the image is
    ``base`` with its ``counts_s[i]`` top-ranked pixels taken from ``replacement``.

    The b·s composites are built chunk by chunk, so at most ``max_batch`` of them exist at once.
    """
    batch, steps = base_bchw.shape[0], counts_s.numel()
    chunks = []
    for flat_m in torch.arange(batch * steps, device=base_bchw.device).split(max_batch):
        image_m, step_m = flat_m // steps, flat_m % steps
        replaced_m1hw = (ranks_bhw[image_m] < counts_s[step_m, None, None])[:, None]
        composite_mchw = torch.where(replaced_m1hw, replacement_bchw[image_m], base_bchw[image_m])
        chunks.append(_probabilities(backbone, composite_mchw).gather(1, classes_bn[image_m]))
    return torch.cat(chunks).view(batch, steps, -1)


@torch.inference_mode()
def rd_at_k(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    heatmaps_bhw: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None = None,
    references: torch.Tensor | Sequence[int] | None = None,
    config: FaithfulnessConfig | None = None,
) -> torch.Tensor:
    """Relative confidence drop when the top-k% pixels are masked: (b, len(config.percents)) float64.

    With softmax probabilities p of the model, ``d = p[target] − p[reference]`` and
    ``RD@k = (d_before − d_after) / d_before``, where ``d_after`` is measured on the image whose
    ⌊k·h·w/100⌋ highest-heat pixels are replaced by ``config.rd_fill``. This is Finer-CAM's
    *relative* confidence drop — d is the target's confidence relative to a similar class — and
    not the plain drop of p[target] (Grad-CAM++'s "average drop"): it asks whether the masked
    pixels carried what tells the target from its look-alike, whereas masking traits the two
    classes share lowers both probabilities and barely moves d. 1: the masked pixels carried the
    whole lead; 0: no effect; above 1: the reference now leads; negative: masking widened the
    lead. It is not clipped. NaN where ``d_before <= 0`` (the target does not lead its reference,
    so there is no lead to drop).

    ``targets`` (b,): default the model's top class per image. ``references`` (b,): the
    look-alike class per image; default the highest-probability class other than the target.
    """
    config = config or FaithfulnessConfig()
    pixels, heat = _check_inputs(backbone, pixels_bchw, heatmaps_bhw)
    clean_bc = _clean_probabilities(backbone, pixels, config.max_batch)
    target_b = _classes(targets, clean_bc.argmax(dim=1), clean_bc.shape[1], "targets")
    reference_b = _classes(references, auto_references(clean_bc, target_b, 1)[:, 0], clean_bc.shape[1], "references")
    if bool((reference_b == target_b).any()):
        raise FaithfulnessError("each reference class must differ from its image's target class")
    classes_b2 = torch.stack([target_b, reference_b], dim=1)

    n_pixels = heat[0].numel()
    counts_k = torch.tensor([math.floor(k * n_pixels / 100) for k in config.percents], device=pixels.device)
    fill = fill_pixels(pixels, config.rd_fill, config.blur_sigma)
    masked_bk2 = _composite_probabilities(backbone, pixels, fill, _pixel_ranks(heat), counts_k, classes_b2, config.max_batch)

    clean_b2 = clean_bc.gather(1, classes_b2)
    before_b = (clean_b2[:, 0] - clean_b2[:, 1]).double()
    after_bk = (masked_bk2[..., 0] - masked_bk2[..., 1]).double()
    drop_bk = (before_b[:, None] - after_bk) / before_b[:, None]
    return torch.where(before_b[:, None] > 0, drop_bk, math.nan)


def _curve_auc(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    heatmaps_bhw: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None,
    config: FaithfulnessConfig,
    insertion: bool,
) -> torch.Tensor:
    """(b,) float64 trapezoid area under p[target] against the fraction of pixels moved."""
    pixels, heat = _check_inputs(backbone, pixels_bchw, heatmaps_bhw)
    clean_bc = _clean_probabilities(backbone, pixels, config.max_batch)
    target_b = _classes(targets, clean_bc.argmax(dim=1), clean_bc.shape[1], "targets")
    fill = fill_pixels(pixels, config.insertion_fill if insertion else config.deletion_fill, config.blur_sigma)
    base, replacement = (fill, pixels) if insertion else (pixels, fill)

    n_pixels = heat[0].numel()
    counts_s = torch.tensor([step * n_pixels // config.steps for step in range(config.steps + 1)], device=pixels.device)
    curve_bs = _composite_probabilities(
        backbone, base, replacement, _pixel_ranks(heat), counts_s, target_b[:, None], config.max_batch
    )[..., 0].double()
    return torch.trapezoid(curve_bs, counts_s.double() / n_pixels, dim=1)


@torch.inference_mode()
def deletion_auc(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    heatmaps_bhw: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None = None,
    config: FaithfulnessConfig | None = None,
) -> torch.Tensor:
    """Deletion AUC (RISE) per image, (b,) float64 in [0, 1]; lower is more faithful.

    Starting from the image, pixels are replaced by ``config.deletion_fill`` in order of
    decreasing heat, ``config.steps`` chunks of equal size (⌊i·h·w/steps⌋ pixels hidden after
    step i). The target's softmax probability is recorded at all ``steps + 1`` points and
    integrated by the trapezoid rule over the fraction of pixels hidden, from 0 to 1.
    ``targets`` (b,): default the model's top class per image.
    """
    return _curve_auc(backbone, pixels_bchw, heatmaps_bhw, targets, config or FaithfulnessConfig(), insertion=False)


@torch.inference_mode()
def insertion_auc(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    heatmaps_bhw: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None = None,
    config: FaithfulnessConfig | None = None,
) -> torch.Tensor:
    """Insertion AUC (RISE) per image, (b,) float64 in [0, 1]; higher is more faithful.

    Starting from ``config.insertion_fill`` (the blurred image by default), the image's pixels
    are put back in order of decreasing heat, in the same chunks and with the same trapezoid
    rule over the fraction of pixels inserted as :func:`deletion_auc`.
    """
    return _curve_auc(backbone, pixels_bchw, heatmaps_bhw, targets, config or FaithfulnessConfig(), insertion=True)


def faithfulness_summary(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    heatmaps_bhw: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None = None,
    references: torch.Tensor | Sequence[int] | None = None,
    config: FaithfulnessConfig | None = None,
) -> dict[str, float | int]:
    """Means over the batch: ``rd@K`` for each k (over images where RD is defined),
    ``deletion_auc``, ``insertion_auc``, with ``n_images`` and ``n_rd_undefined`` (images whose
    target does not lead its reference). Default targets are the model's top classes."""
    config = config or FaithfulnessConfig()
    rd_bk = rd_at_k(backbone, pixels_bchw, heatmaps_bhw, targets, references, config)
    deletion_b = deletion_auc(backbone, pixels_bchw, heatmaps_bhw, targets, config)
    insertion_b = insertion_auc(backbone, pixels_bchw, heatmaps_bhw, targets, config)
    summary: dict[str, float | int] = {f"rd@{k:g}": float(rd_bk[:, index].nanmean()) for index, k in enumerate(config.percents)}
    return {
        **summary,
        "deletion_auc": float(deletion_b.mean()),
        "insertion_auc": float(insertion_b.mean()),
        "n_images": int(rd_bk.shape[0]),
        "n_rd_undefined": int(rd_bk[:, 0].isnan().sum()),
    }
