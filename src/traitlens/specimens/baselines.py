"""Feature sets scored against ground truth on equal terms: SAE latents and three baselines.

Every set turns tokens (n, d) into scores (n, f), one column per candidate feature, where a higher
score means "more of this feature". :func:`traitlens.specimens.discovery.trait_discovery` fits each
set once on held-out images, then ranks patches by every column.

- :class:`SAEFeatures`: the SAE's latents, ``sae.encode``.
- :class:`NeuronFeatures`: the activations themselves, each neuron as ``+x`` and ``-x``.
- :class:`PCAFeatures`: projections on the top principal directions, each as ``+p`` and ``-p``.
- :class:`KMeansFeatures`: closeness to each k-means centroid, ``-||x - c||^2``.

Signed features come in both signs because a direction's sign is arbitrary (PCA) or because a trait
can push a neuron down as well as up; a trait is then found by whichever sign ranks it first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from traitlens.errors import TraitlensError
from traitlens.sae.model import SparseAutoencoder

_FIT_CHUNK_ROWS = 8192


class FeatureSetError(TraitlensError):
    """A feature set cannot be fitted to, or applied on, the given activations."""


class FeatureSet(Protocol):
    def fit(self, acts_nd: torch.Tensor) -> FeatureSet:
        """A copy fitted to ``acts_nd`` (itself when there is nothing to fit)."""
        ...

    def features(self, acts_nd: torch.Tensor) -> torch.Tensor:
        """Scores (n, f) of tokens (n, d): column j ranks tokens by feature j."""
        ...


def both_signs(scores_nk: torch.Tensor) -> torch.Tensor:
    """(n, k) -> (n, 2k): columns ``0..k-1`` are the scores, ``k..2k-1`` their negations."""
    return torch.cat([scores_nk, -scores_nk], dim=1)


def _check_acts(acts_nd: torch.Tensor, d_in: int, name: str) -> None:
    if acts_nd.ndim != 2 or acts_nd.shape[1] != d_in:
        raise FeatureSetError(f"{name} expects activations of shape (n, {d_in}), got {tuple(acts_nd.shape)}")


@dataclass(frozen=True)
class SAEFeatures:
    """An SAE's latents (n, width); nothing to fit."""

    sae: SparseAutoencoder

    def fit(self, acts_nd: torch.Tensor) -> SAEFeatures:
        return self

    @torch.no_grad()
    def features(self, acts_nd: torch.Tensor) -> torch.Tensor:
        _check_acts(acts_nd, self.sae.config.d_in, "the SAE")
        weight = self.sae.W_enc
        return self.sae.encode(acts_nd.to(device=weight.device, dtype=weight.dtype))


@dataclass(frozen=True)
class NeuronFeatures:
    """The raw activations in both signs (n, 2d): feature ``i`` is ``+x_i``, ``d + i`` is ``-x_i``."""

    def fit(self, acts_nd: torch.Tensor) -> NeuronFeatures:
        return self

    def features(self, acts_nd: torch.Tensor) -> torch.Tensor:
        return both_signs(acts_nd.to(torch.float32))


@dataclass(frozen=True)
class PCAFeatures:
    """Projections on the top ``n_components`` principal directions, both signs (n, 2k).

    Directions come from the float64 covariance of the fitting tokens, by decreasing variance; each
    is signed so that its largest-magnitude entry is positive, so feature indices are reproducible.
    """

    n_components: int = 64
    mean_d: torch.Tensor | None = None
    components_kd: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.n_components < 1:
            raise FeatureSetError(f"PCA needs at least 1 component, got {self.n_components}")

    def fit(self, acts_nd: torch.Tensor) -> PCAFeatures:
        if acts_nd.ndim != 2 or len(acts_nd) < 2:
            raise FeatureSetError(f"PCA needs at least 2 tokens (n, d) to fit, got shape {tuple(acts_nd.shape)}")
        d = acts_nd.shape[1]
        mean_d = acts_nd.to(torch.float64).mean(0)
        covariance_dd = torch.zeros(d, d, dtype=torch.float64, device=acts_nd.device)
        for chunk in acts_nd.split(_FIT_CHUNK_ROWS):
            centered = chunk.to(torch.float64) - mean_d
            covariance_dd += centered.T @ centered
        _, vectors_dd = torch.linalg.eigh(covariance_dd / len(acts_nd))
        k = min(self.n_components, d)
        components_kd = vectors_dd[:, -k:].flip(1).T
        largest_k1 = components_kd.abs().argmax(1, keepdim=True)
        components_kd = components_kd * components_kd.gather(1, largest_k1).sign()
        return replace(self, mean_d=mean_d.to(torch.float32), components_kd=components_kd.to(torch.float32))

    def features(self, acts_nd: torch.Tensor) -> torch.Tensor:
        if self.mean_d is None or self.components_kd is None:
            raise FeatureSetError("PCA features need fit() first")
        _check_acts(acts_nd, len(self.mean_d), "PCA")
        return both_signs((acts_nd.to(torch.float32) - self.mean_d) @ self.components_kd.T)


def squared_distances(x_nd: torch.Tensor, centers_kd: torch.Tensor) -> torch.Tensor:
    """(n, k) squared Euclidean distances between rows of ``x_nd`` and of ``centers_kd``."""
    return x_nd.square().sum(1, keepdim=True) - 2 * x_nd @ centers_kd.T + centers_kd.square().sum(1)


def kmeans_plus_plus(x_nd: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new center is a token drawn with probability ∝ its squared distance
    to the nearest center so far. Draws use ``generator`` (on the CPU), so a seed fixes the result."""
    n = len(x_nd)
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x_nd[first]]
    # rounding can make a distance slightly negative; a probability must not be
    nearest_n = squared_distances(x_nd, x_nd[first : first + 1])[:, 0].double().clamp_min(0)
    for _ in range(1, k):
        total = float(nearest_n.sum())
        if total > 0:
            pick = int(torch.multinomial((nearest_n / total).cpu(), 1, generator=generator))
        else:  # every token already sits on a center: any token will do
            pick = int(torch.randint(n, (1,), generator=generator))
        centers.append(x_nd[pick])
        nearest_n = torch.minimum(nearest_n, squared_distances(x_nd, x_nd[pick : pick + 1])[:, 0].double().clamp_min(0))
    return torch.stack(centers)


@dataclass(frozen=True)
class KMeansFeatures:
    """Closeness to each of ``n_clusters`` centroids, ``-||x - c_j||^2`` (n, k).

    The negative squared distance is the quantity k-means itself minimizes, so the feature ranks
    tokens by how well centroid j explains them; unlike a hard assignment it has no ties. Centroids
    start from seeded k-means++ and take up to ``iterations`` Lloyd steps (stopping early when no
    assignment changes); a cluster that loses all its tokens keeps its previous centroid.
    """

    n_clusters: int = 64
    iterations: int = 20
    seed: int = 0
    centers_kd: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.n_clusters < 1 or self.iterations < 0:
            raise FeatureSetError(f"k-means needs n_clusters >= 1 and iterations >= 0, got {self.n_clusters}, {self.iterations}")

    def fit(self, acts_nd: torch.Tensor) -> KMeansFeatures:
        if acts_nd.ndim != 2 or len(acts_nd) < self.n_clusters:
            raise FeatureSetError(f"k-means with {self.n_clusters} clusters needs at least as many tokens (n, d), "
                                  f"got shape {tuple(acts_nd.shape)}")
        x_nd = acts_nd.to(torch.float32)
        centers_kd = kmeans_plus_plus(x_nd, self.n_clusters, torch.Generator().manual_seed(self.seed))
        assignment_n = None
        for _ in range(self.iterations):
            new_assignment_n = squared_distances(x_nd, centers_kd).argmin(1)
            if assignment_n is not None and torch.equal(new_assignment_n, assignment_n):
                break
            assignment_n = new_assignment_n
            sums_kd = torch.zeros_like(centers_kd).index_add_(0, assignment_n, x_nd)
            counts_k = torch.bincount(assignment_n, minlength=self.n_clusters)
            centers_kd = torch.where((counts_k > 0)[:, None], sums_kd / counts_k.clamp_min(1)[:, None], centers_kd)
        return replace(self, centers_kd=centers_kd)

    def features(self, acts_nd: torch.Tensor) -> torch.Tensor:
        if self.centers_kd is None:
            raise FeatureSetError("k-means features need fit() first")
        _check_acts(acts_nd, self.centers_kd.shape[1], "k-means")
        return -squared_distances(acts_nd.to(torch.float32), self.centers_kd)
