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


def _rewrite(directory: Path, **sae_fields: object) -> None:
    config = json.loads((directory / CONFIG).read_text())
    config["sae"].update(sae_fields)
    (directory / CONFIG).write_text(json.dumps(config))


def test_config_is_checked_against_the_weights_header_before_allocating(tmp_path: Path) -> None:
    _, directory = _saved(tmp_path)
    _rewrite(directory, width=10**12)  # building this SAE would ask for 40 TB and fail with another error
    with pytest.raises(SAELoadError, match=r"W_enc has shape \(12, 5\), the config .* needs \(1000000000000, 5\)"):
        load_sae_with_config(directory)
    _rewrite(directory, width=12, activation="topk", k=4)  # a JumpReLU file read as TopK: log_threshold is unexpected
    with pytest.raises(SAELoadError, match="tensors unexpected log_threshold"):
        load_sae_with_config(directory)


def test_non_finite_weights_are_refused_but_a_zero_jumprelu_threshold_is_not(tmp_path: Path) -> None:
    sae, directory = _saved(tmp_path)
    with torch.no_grad():
        sae.log_threshold[0] = float("-inf")  # threshold 0, as imported ReLU-like latents have
    save_sae(sae, directory)
    assert load_sae_with_config(directory)[0].log_threshold[0] == float("-inf")
    with torch.no_grad():
        sae.W_enc[2, 1] = float("nan")
    save_sae(sae, directory)
    with pytest.raises(SAELoadError, match="tensor W_enc holds NaN or infinite values"):
        load_sae_with_config(directory)


def test_a_failed_weights_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sae, directory = _saved(tmp_path)
    before = (directory / WEIGHTS).read_bytes()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("traitlens.atomic.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_sae(sae, directory)
    assert (directory / WEIGHTS).read_bytes() == before and not list(directory.glob("*.tmp"))
