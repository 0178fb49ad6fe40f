"""The top-level Python API: every exported name resolves, and the list is the one documented."""

from __future__ import annotations

import traitlens


def test_every_export_resolves_to_its_package_object() -> None:
    from traitlens.features import LatentFeatures
    from traitlens.sae import load_sae

    assert traitlens.__all__ == sorted(traitlens._EXPORTS)
    for name in traitlens.__all__:
        assert getattr(traitlens, name) is not None
    assert traitlens.load_sae is load_sae and traitlens.LatentFeatures is LatentFeatures


def test_load_sae_returns_the_sae(tmp_path) -> None:
    from traitlens.sae import SAEConfig, SparseAutoencoder, save_sae

    save_sae(SparseAutoencoder(SAEConfig(d_in=8, width=16, activation="topk", k=2)), tmp_path / "sae")
    sae = traitlens.load_sae(tmp_path / "sae")
    assert isinstance(sae, traitlens.SparseAutoencoder) and sae.config.width == 16
