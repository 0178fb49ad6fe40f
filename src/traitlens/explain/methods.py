"""The CAM family: each method is the few lines that turn a layer's activations and one kind of
evidence into a map over its patch tokens; :mod:`traitlens.explain.maps` gathers the evidence.

All work on ``acts_bnd`` (batch, patch tokens, channels) and return ``cam_bn`` before the ReLU.
Evidence kinds: ``gradients`` d score / d acts (b, n, d); ``classifier`` the explained score's
row of the linear head (b, d); ``masked_scores`` the score of the image masked by each channel
(b, d); ``activations`` nothing more (the activations are passed again); ``class_attention``
the target class query's attention over the patches per attention head (b, heads, n), which a
class-query head gives (Prompt-CAM, INTR: interpretable by design, no gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from traitlens.explain.config import ExplainError

Evidence = Literal["gradients", "classifier", "masked_scores", "activations", "class_attention"]
CamFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamMethod:
    name: str
    evidence: Evidence
    cam: CamFn
    uses_classes: bool = True
    """False for class-agnostic methods, to which references mean nothing."""
    head_kind: str | None = None
    """The head kind a ``class_attention`` method reads (``--head`` of that kind)."""


def channel_weighted(acts_bnd: torch.Tensor, weights_bd: torch.Tensor) -> torch.Tensor:
    """(b, n): each token's channels weighted by one weight per channel and image."""
    return torch.einsum("bnd,bd->bn", acts_bnd, weights_bd)


def cam(acts_bnd: torch.Tensor, class_weights_bd: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016): the linear head applied to each token."""
    return channel_weighted(acts_bnd, class_weights_bd)


def grad_cam(acts_bnd: torch.Tensor, grads_bnd: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their spatially averaged gradient."""
    return channel_weighted(acts_bnd, grads_bnd.mean(1))


def grad_cam_plus_plus(acts_bnd: torch.Tensor, grads_bnd: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): positive gradients weighted per token by
    the closed-form alphas (from exp(score) derivatives), summed per channel."""
    grads2_bnd = grads_bnd.square()
    acts_sum_b1d = acts_bnd.sum(1, keepdim=True)
    alpha_bnd = grads2_bnd / (2 * grads2_bnd + acts_sum_b1d * grads2_bnd * grads_bnd + 1e-6)
    alpha_bnd = torch.where(grads_bnd != 0, alpha_bnd, 0.0)
    return channel_weighted(acts_bnd, (grads_bnd.relu() * alpha_bnd).sum(1))


def hires_cam(acts_bnd: torch.Tensor, grads_bnd: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): gradients times activations per token, without averaging."""
    return (grads_bnd * acts_bnd).sum(-1)


def layer_cam(acts_bnd: torch.Tensor, grads_bnd: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): activations weighted per token by their positive gradients."""
    return (grads_bnd.relu() * acts_bnd).sum(-1)


def score_cam(acts_bnd: torch.Tensor, masked_scores_bd: torch.Tensor) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): channels weighted by the softmax over channels of the score
    the image gets when masked by that channel's (upsampled, normalized) map."""
    return channel_weighted(acts_bnd, masked_scores_bd.softmax(-1))


def eigen_cam(acts_bnd: torch.Tensor, _acts_bnd: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): the centred tokens projected on their first principal
    direction. An SVD's sign is arbitrary, so the projection is flipped when its largest
    magnitude is negative (Seg-Eigen-CAM's correction), else the ReLU could keep the background."""
    centred_bnd = acts_bnd - acts_bnd.mean(1, keepdim=True)
    direction_bd = torch.linalg.svd(centred_bnd, full_matrices=False).Vh[:, 0]
    projection_bn = channel_weighted(centred_bnd, direction_bd)
    flip_b1 = projection_bn.min(1, keepdim=True).values.abs() > projection_bn.max(1, keepdim=True).values.abs()
    return torch.where(flip_b1, -projection_bn, projection_bn)


def class_attention_map(_acts_bnd: torch.Tensor, attention_bhn: torch.Tensor) -> torch.Tensor:
    """Prompt-CAM and INTR: the target query's attention, averaged over the attention heads (each
    head's own map is kept as well: they are the traits)."""
    return attention_bhn.mean(1)


METHODS: dict[str, CamMethod] = {
    method.name: method
    for method in (
        CamMethod("cam", "classifier", cam),
        CamMethod("grad-cam", "gradients", grad_cam),
        CamMethod("grad-cam++", "gradients", grad_cam_plus_plus),
        CamMethod("hirescam", "gradients", hires_cam),
        CamMethod("layercam", "gradients", layer_cam),
        CamMethod("score-cam", "masked_scores", score_cam),
        CamMethod("eigen-cam", "activations", eigen_cam, uses_classes=False),
        CamMethod("prompt-cam", "class_attention", class_attention_map, head_kind="prompt-cam"),
        CamMethod("intr", "class_attention", class_attention_map, head_kind="intr"),
    )
}

CLASSIFIER_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.head_kind is None)
"""The methods any classifier supports; the others need a class-query head of their kind."""


def method_by_name(name: str) -> CamMethod:
    method = METHODS.get(name.strip().lower())
    if method is None:
        raise ExplainError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return method
