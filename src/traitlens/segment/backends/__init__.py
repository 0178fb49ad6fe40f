"""Segmentation backends, one module each, registered by name (``--backend``): a backend is made
from the job's config and the label count, segments one group of images after another (each group
from its own support images, as frames after the labelled first frame of a pseudo-video), and can
save and restore what it carries from one batch to the next, so a killed run resumes exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from traitlens.segment.config import SegmentConfig, SegmentError
from traitlens.segment.support import SupportImage


@dataclass(frozen=True)
class Segmented:
    labels_hw: np.ndarray
    """uint8 label map at the image's own size."""
    confidence: float
    """Mean over the image's pixels of the winning label's probability (1: no doubt anywhere)."""


class SegmentBackend(Protocol):
    def identity(self) -> dict[str, Any]:
        """Everything besides the config that decides the result (a model's weights fingerprint)."""

    def start(self, supports: tuple[SupportImage, ...]) -> None:
        """Begin a group (a pseudo-video) from these support images."""

    def segment(self, images: list[Image.Image]) -> list[Segmented]:
        """The next images of the group, in order."""

    def state(self) -> dict[str, torch.Tensor]:
        """What the group carries to its next batch (saved with each finished batch)."""

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Go on from a saved state, after :meth:`start`."""


BackendFactory = Callable[[SegmentConfig, int], SegmentBackend]


@dataclass(frozen=True)
class BackendEntry:
    make: BackendFactory
    summary: str


_BACKENDS: dict[str, BackendEntry] = {}


def register_backend(name: str, make: BackendFactory, summary: str) -> None:
    """Add a backend under ``name`` (``--backend name``); ``make(config, n_labels)`` builds it."""
    _BACKENDS[name] = BackendEntry(make, summary)


def segment_backends() -> dict[str, BackendEntry]:
    """Every registered backend by name, the built-in ones first."""
    from traitlens.segment.backends import features, sam2  # noqa: F401  (each registers itself)

    return dict(_BACKENDS)


def make_backend(config: SegmentConfig, n_labels: int) -> SegmentBackend:
    backends = segment_backends()
    if config.backend not in backends:
        raise SegmentError(f"unknown backend {config.backend!r}; choose one of {', '.join(backends)}")
    return backends[config.backend].make(config, n_labels)


def confident_labels(probs_chw: torch.Tensor) -> Segmented:
    """Labels (argmax) and confidence of per-pixel label probabilities."""
    top_hw, labels_hw = probs_chw.max(dim=0)
    return Segmented(labels_hw.to(torch.uint8).cpu().numpy(), float(top_hw.mean()))
