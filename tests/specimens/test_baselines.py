"""The baseline feature sets on planted structure."""

from __future__ import annotations

import pytest
import torch

from traitlens.errors import TraitlensError
from traitlens.sae import SAEConfig, SparseAutoencoder
from traitlens.specimens.average_precision import average_precision, average_precision_by_target
from traitlens.specimens.baselines import KMeansFeatures, NeuronFeatures, PCAFeatures, SAEFeatures
from traitlens.specimens.discovery import (
    DiscoveryOptions,
)


def test_pca_recovers_a_planted_direction() -> None:
    generator = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=generator), dim=0)
    trait = torch.rand(600, generator=generator) < 0.3
    acts = 0.1 * torch.randn(600, 8, generator=generator) + 3 * trait[:, None] * direction
    pca = PCAFeatures(n_components=2).fit(acts[:300])
    assert pca.components_kd is not None and abs(float(pca.components_kd[0] @ direction)) > 0.99
    features = pca.features(acts[300:])
    assert features.shape == (300, 4) and torch.equal(features[:, 2:], -features[:, :2])
    assert float(average_precision(features, trait[300:]).max()) == 1.0


def test_kmeans_finds_well_separated_clusters_deterministically() -> None:
    generator = torch.Generator().manual_seed(0)
    cluster = torch.arange(300) % 3
    acts = 0.2 * torch.randn(300, 4, generator=generator) + 10 * torch.eye(4)[cluster]
    kmeans = KMeansFeatures(n_clusters=3, seed=1).fit(acts)
    assert kmeans.centers_kd is not None
    assert torch.equal(kmeans.centers_kd, KMeansFeatures(n_clusters=3, seed=1).fit(acts).centers_kd)
    positives = torch.stack([cluster == c for c in range(3)], 1)
    assert (average_precision_by_target(kmeans.features(acts), positives).amax(1) == 1.0).all()


def test_a_hand_made_sae_latent_fires_on_the_trait() -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=4, width=3, activation="relu"))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[1, 2] = 1.0
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.0]))
        sae.b_dec.zero_()
    acts = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * 0.2
    trait = torch.arange(200) % 5 == 0
    acts[trait, 2] += 2
    ap = average_precision(SAEFeatures(sae).features(acts), trait)
    assert float(ap[1]) == 1.0 and int(ap.argmax()) == 1
    assert NeuronFeatures().features(acts).shape == (200, 8)


# -- trait discovery end to end ----------------------------------------------------------------------

def test_feature_sets_refuse_what_they_cannot_do() -> None:
    acts = torch.zeros(3, 4)
    with pytest.raises(TraitlensError, match="fit"):
        PCAFeatures().features(acts)
    with pytest.raises(TraitlensError, match="at least as many tokens"):
        KMeansFeatures(n_clusters=5).fit(acts)
    with pytest.raises(TraitlensError, match=r"\(n, 5\)"):
        SAEFeatures(SparseAutoencoder(SAEConfig(d_in=5, width=2, activation="relu"))).features(acts)
    with pytest.raises(TraitlensError, match="min_coverage"):
        DiscoveryOptions(min_coverage=0)
