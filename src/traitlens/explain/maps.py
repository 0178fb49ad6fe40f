"""CAM maps on any backbone, as tensors on the model's device.

One forward pass per batch reads the layer's ``tokens_btd`` through ``Backbone.capture(detach=False)``
(removed when it ends, errors included); gradient methods add one backward pass of the batch's
summed scores, Score-CAM one forward per channel. The layer's layout drops the prefix
tokens and folds the patches to their grid, so no model needs a reshape function. Only
``backbone.forward`` (the head's scores) is explained, so any head that returns a Backbone works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from traitlens.backbones import Backbone, ClassAttention, TokenLayout
from traitlens.explain.classifier import classifier_weights
from traitlens.explain.config import DEFAULT_GAMMA, ExplainError, check_contrast
from traitlens.explain.contrast import auto_references, check_class_indices, class_coefficients
from traitlens.explain.methods import CamMethod, method_by_name

log = logging.getLogger(__name__)

References = torch.Tensor | Literal["auto"] | None
"""(b, k) class indices, ``"auto"`` (each image's highest-scoring other classes) or none."""


@dataclass(frozen=True)
class CamResult:
    """Maps of one batch and what they explain (all on the model's device)."""

    maps_bhw: torch.Tensor
    """float32 in [0, 1] per image, at the model input's size."""
    logits_bc: torch.Tensor
    targets_b: torch.Tensor
    refs_bk: torch.Tensor
    """int64 (b, k); k = 0 without references."""
    layer: str
    head_maps_bkhw: torch.Tensor | None = None
    """Class-attention methods: each attention head's own map (b, heads, H, W), in [0, 1]."""


def default_layer(backbone: Backbone) -> str:
    """The last layer; for models with a CLS token the one before it, because a head that reads the
    CLS token after the last block gives that block's patch tokens no gradient at all."""
    names = backbone.layer_names
    if len(names) > 1 and backbone.layer(names[-1]).layout.has_cls:
        return names[-2]
    return names[-1]


def upsample(maps_bhw: torch.Tensor, size_hw: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """(b, h, w) -> (b, H, W), bilinear; pixel centres aligned, or with ``align_corners`` the
    corner cells' centres stretched onto the corner pixels."""
    return F.interpolate(maps_bhw[:, None], size=size_hw, mode="bilinear", align_corners=align_corners)[:, 0]


def normalize_maps(maps_bhw: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own minimum and maximum; a constant map becomes 0."""
    low_b11 = maps_bhw.amin(dim=(1, 2), keepdim=True)
    range_b11 = maps_bhw.amax(dim=(1, 2), keepdim=True) - low_b11
    return torch.where(range_b11 > 0, (maps_bhw - low_b11) / range_b11.clamp_min(torch.finfo(maps_bhw.dtype).tiny), 0.0)


def compute_cams(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    method: str,
    targets_b: torch.Tensor | None = None,
    refs_bk: References = None,
    gamma: float = DEFAULT_GAMMA,
    n_refs: int | None = None,
    layer: str | int | None = None,
    chunk_size: int = 32,
) -> CamResult:
    """Maps of ``method`` for preprocessed pixels (b, 3, H, W) at ``layer``.

    ``targets_b`` (b,) are class indices (default: the predicted classes). With ``refs_bk`` the
    explained score is Finer-CAM's ``y_target - gamma * mean(y_refs)`` (``n_refs`` applies to
    ``"auto"``, see :func:`~traitlens.explain.contrast.auto_references`); ``gamma = 0`` gives the
    base method exactly. ``chunk_size`` bounds the masked
    images per forward pass of Score-CAM.
    """
    cam_method = method_by_name(method)
    check_contrast(gamma, n_refs)
    if cam_method.evidence == "class_attention":
        return _class_attention_maps(backbone, pixels_bchw, cam_method, targets_b, refs_bk, layer)
    if refs_bk is not None and not cam_method.uses_classes:
        raise ExplainError(f"{cam_method.name} does not depend on the class, so reference classes do not apply")
    name = backbone.resolve_layer(layer) if layer is not None else default_layer(backbone)
    layout = backbone.layer(name).layout
    pixels_bchw = pixels_bchw.to(backbone.device)
    wants_gradients = cam_method.evidence == "gradients"
    with backbone.capture(name, detach=False) as read, torch.set_grad_enabled(wants_gradients):
        # Pixels that require grad keep the graph even for a head whose weights are frozen.
        logits_bc = backbone.forward(pixels_bchw.detach().requires_grad_(wants_gradients))
        if name not in read:
            raise ExplainError(f"the head's forward pass does not go through layer {name} of {backbone.spec}")
        tokens_btd = read[name]
    if logits_bc.ndim != 2:
        raise ExplainError(f"the head must give one score per class (b, classes), got shape {tuple(logits_bc.shape)}")
    n_classes = logits_bc.shape[1]
    targets_b = logits_bc.detach().argmax(1) if targets_b is None else targets_b.to(logits_bc.device, torch.int64)
    check_class_indices(targets_b, n_classes, "target class")
    refs_bk = _references(refs_bk, logits_bc, targets_b, n_refs, n_classes)
    coef_bc = class_coefficients(targets_b, refs_bk, gamma, n_classes, logits_bc.dtype)
    size_hw = (pixels_bchw.shape[-2], pixels_bchw.shape[-1])
    if tokens_btd.shape[1] != layout.n_tokens:
        raise ExplainError(f"layer {name} gave {tokens_btd.shape[1]} tokens for {size_hw[0]}x{size_hw[1]} pixels, not the "
                           f"{layout.n_tokens} of its layout: give pixels preprocessed to {backbone.preprocess.size_hw}")
    evidence = _evidence(cam_method, backbone, pixels_bchw, logits_bc, tokens_btd, coef_bc, layout, chunk_size, name)
    acts_bnd = layout.select(tokens_btd, "patch").detach()
    cam_bhw = cam_method.cam(acts_bnd, evidence).relu().reshape(-1, *layout.grid_hw)
    maps_bhw = normalize_maps(upsample(cam_bhw.to(torch.float32), size_hw))
    return CamResult(maps_bhw, logits_bc.detach(), targets_b, refs_bk, name)


def cam_maps(
    backbone: Backbone,
    pixels_bchw: torch.Tensor,
    method: str,
    targets_b: torch.Tensor | None = None,
    refs_bk: References = None,
    gamma: float = DEFAULT_GAMMA,
    layer: str | int | None = None,
    n_refs: int | None = None,
) -> torch.Tensor:
    """(b, H, W) float32 maps in [0, 1] at the model input's size; see :func:`compute_cams`."""
    return compute_cams(backbone, pixels_bchw, method, targets_b, refs_bk, gamma, n_refs, layer).maps_bhw


def _references(refs_bk: References, logits_bc: torch.Tensor, targets_b: torch.Tensor, n_refs: int | None,
                n_classes: int) -> torch.Tensor:
    if refs_bk is None:
        return torch.zeros(len(targets_b), 0, dtype=torch.int64, device=logits_bc.device)
    if isinstance(refs_bk, str):
        if refs_bk != "auto":
            raise ExplainError(f"references must be 'auto' or class indices, got {refs_bk!r}")
        return auto_references(logits_bc, targets_b, n_refs)
    refs_bk = refs_bk.to(logits_bc.device, torch.int64)
    if refs_bk.ndim != 2 or len(refs_bk) != len(targets_b):
        raise ExplainError(f"references must be (batch, k) class indices, got shape {tuple(refs_bk.shape)}")
    check_class_indices(refs_bk, n_classes, "reference class")
    return refs_bk


def _evidence(method: CamMethod, backbone: Backbone, pixels_bchw: torch.Tensor, logits_bc: torch.Tensor,
              tokens_btd: torch.Tensor, coef_bc: torch.Tensor, layout: TokenLayout, chunk_size: int,
              layer: str) -> torch.Tensor:
    """What ``method`` weighs the activations with (see :mod:`traitlens.explain.methods`)."""
    acts_bnd = layout.select(tokens_btd, "patch").detach()
    if method.evidence == "gradients":
        with torch.enable_grad():  # the score must join the graph even when called under no_grad
            score_b = (logits_bc * coef_bc).sum(1)
        # One backward of the batch sum: each image's score depends on its own tokens only.
        (grads_btd,) = torch.autograd.grad(score_b.sum(), tokens_btd, allow_unused=True, materialize_grads=True)
        grads_bnd = layout.select(grads_btd, "patch")
        if not bool(grads_bnd.any()):
            log.warning("the patch tokens of layer %s do not affect the explained score (zero gradients); "
                        "the maps are blank, choose an earlier layer", layer)
        return grads_bnd
    if method.evidence == "classifier":
        weights_cd = classifier_weights(backbone, acts_bnd.shape[2], coef_bc.shape[1]).to(coef_bc.dtype)
        return coef_bc @ weights_cd
    if method.evidence == "masked_scores":
        return _masked_scores(backbone, pixels_bchw, acts_bnd, coef_bc, layout.grid_hw, chunk_size)
    return acts_bnd


@torch.no_grad()
def _masked_scores(backbone: Backbone, pixels_bchw: torch.Tensor, acts_bnd: torch.Tensor, coef_bc: torch.Tensor,
                   grid_hw: tuple[int, int], chunk_size: int) -> torch.Tensor:
    """(b, d): the explained score of each image masked by each channel's map, upsampled to the
    input and scaled to [0, 1] (Score-CAM), ``chunk_size`` masked images per forward pass.

    The masks stretch corner to corner, as pytorch-grad-cam's do: the softmax over raw scores is
    peaked, so the mask geometry decides which few channels win (on a 3x3 grid, centre-aligned
    masks gave maps correlating only 0.68 with the reference implementation's)."""
    batch, _, channels = acts_bnd.shape
    size_hw = (pixels_bchw.shape[-2], pixels_bchw.shape[-1])
    scores_bd = torch.empty(batch, channels, dtype=coef_bc.dtype, device=coef_bc.device)
    for image in range(batch):
        for start in range(0, channels, chunk_size):
            channel_maps_khw = acts_bnd[image, :, start:start + chunk_size].T.reshape(-1, *grid_hw)
            masks_khw = normalize_maps(upsample(channel_maps_khw.to(pixels_bchw.dtype), size_hw, align_corners=True))
            logits_kc = backbone.forward(pixels_bchw[image] * masks_khw[:, None])
            scores_bd[image, start:start + chunk_size] = logits_kc @ coef_bc[image]
    return scores_bd


def check_class_attention(backbone: Backbone, cam_method: CamMethod, has_refs: bool, layer: str | int | None) -> ClassAttention:
    """The head a class-query method reads, once the request is known to fit it: a head of the
    method's kind, no reference classes, and no layer other than the one its queries read."""
    attention = backbone.class_attention
    if attention is None or attention.kind != cam_method.head_kind:
        have = "no class-query head" if attention is None else f"a head of kind {attention.kind}"
        raise ExplainError(f"--method {cam_method.name} needs a head of kind {cam_method.head_kind} (--head DIR from traitlens "
                           f"heads train --kind {cam_method.head_kind}); this model has {have}")
    if has_refs:
        raise ExplainError(f"{cam_method.name} maps are a class query's own attention; reference classes do not apply")
    if layer is not None and backbone.resolve_layer(layer) != attention.layer:
        raise ExplainError(f"{cam_method.name} maps cover the head's layer {attention.layer}, not {layer}")
    return attention


def _class_attention_maps(backbone: Backbone, pixels_bchw: torch.Tensor, cam_method: CamMethod, targets_b: torch.Tensor | None,
                          refs_bk: References, layer: str | int | None) -> CamResult:
    """Prompt-CAM / INTR maps: where the target class's own query attends, per attention head
    and averaged over them, read from the head (no gradients)."""
    attention = check_class_attention(backbone, cam_method, refs_bk is not None, layer)
    layout = backbone.layer(attention.layer).layout
    pixels_bchw = pixels_bchw.to(backbone.device)
    with torch.no_grad():
        logits_bc, attention_bhcp = attention.attend(pixels_bchw)
    targets_b = logits_bc.argmax(1) if targets_b is None else targets_b.to(logits_bc.device, torch.int64)
    check_class_indices(targets_b, logits_bc.shape[1], "target class")
    batch_b = torch.arange(len(targets_b), device=attention_bhcp.device)
    target_bhn = attention_bhcp[batch_b, :, targets_b.to(attention_bhcp.device)].float()
    size_hw = (pixels_bchw.shape[-2], pixels_bchw.shape[-1])
    b, n_heads = target_bhn.shape[:2]

    def to_maps(maps_bn: torch.Tensor) -> torch.Tensor:
        return normalize_maps(upsample(maps_bn.reshape(-1, *layout.grid_hw), size_hw))

    maps_bhw = to_maps(cam_method.cam(target_bhn, target_bhn))
    head_maps_bkhw = to_maps(target_bhn.reshape(b * n_heads, -1)).reshape(b, n_heads, *size_hw)
    no_refs_bk = torch.zeros(b, 0, dtype=torch.int64, device=logits_bc.device)
    return CamResult(maps_bhw, logits_bc, targets_b, no_refs_bk, attention.layer, head_maps_bkhw)
