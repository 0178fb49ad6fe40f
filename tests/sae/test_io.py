from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from traitlens.sae import SAEConfig, SparseAutoencoder, load_sae_with_config, save_sae
from traitlens.sae.io import CONFIG, WEIGHTS, SAELoadError


def _saved(tmp_path: Path) -> tuple[SparseAutoencoder, Path]:
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=5, width=12, activation="jumprelu"))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.threshold.fill_(0.2)
    save_sae(sae, tmp_path / "sae", extra={"layer": "blocks.3"})
    return sae, tmp_path / "sae"


def test_round_trip_is_exact_and_keeps_provenance(tmp_path: Path) -> None:
    sae, directory = _saved(tmp_path)
    loaded, config = load_sae_with_config(directory)
    assert config["layer"] == "blocks.3" and loaded.config == sae.config
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not list(directory.glob("*.tmp"))


def test_damaged_saves_give_one_line(tmp_path: Path) -> None:
    _, directory = _saved(tmp_path)
    weights = (directory / WEIGHTS).read_bytes()
    (directory / WEIGHTS).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(SAELoadError, match="cannot read SAE weights"):
        load_sae_with_config(directory)
    (directory / WEIGHTS).write_bytes(weights)
    config = json.loads((directory / CONFIG).read_text())
    config["sae"]["width"] = 13
    (directory / CONFIG).write_text(json.dumps(config))
    with pytest.raises(SAELoadError, match="do not match its config"):
        load_sae_with_config(directory)
    (directory / CONFIG).write_text("{")
    with pytest.raises(SAELoadError, match="damaged SAE config"):
        load_sae_with_config(directory)
    with pytest.raises(SAELoadError, match="config.json missing"):
        load_sae_with_config(tmp_path / "nowhere")
