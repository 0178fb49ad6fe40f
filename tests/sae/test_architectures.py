"""SAE architectures: each registered one's own behaviour, and a new one added from this file alone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from tests.sae.conftest import STORE_LAYER
from traitlens.cli import build_parser, main
from traitlens.sae import (
    ARCHITECTURES,
    Architecture,
    SAEConfig,
    SparseAutoencoder,
    load_sae_with_config,
    register,
)
from traitlens.sae.config import SAEConfigError
from traitlens.sae.encoding import Encoding


class ShiftedReLU(Architecture):
    """Test-only: ``relu(pre - shift)`` with its own config field, an L1 penalty and a step after
    training that records it ran (in the ``threshold`` buffer every SAE has)."""

    name = "shifted-relu"
    description = "shifted-relu (test only)"
    config_fields: ClassVar[dict[str, float]] = {"shift": 0.5}

    def activate(self, sae: SparseAutoencoder, pre_nw: torch.Tensor) -> torch.Tensor:
        return (pre_nw - sae.config.own_fields["shift"]).relu()

    def sparsity_penalty(self, sae: SparseAutoencoder, encoding: Encoding) -> torch.Tensor:
        return encoding.dense().sum(1).mean()

    @torch.no_grad()
    def after_training(self, sae: SparseAutoencoder, sample_nd: torch.Tensor) -> None:
        sae.threshold.fill_(float(len(sample_nd)))


@pytest.fixture
def shifted() -> Iterator[Architecture]:
    architecture = register(ShiftedReLU())
    yield architecture
    del ARCHITECTURES[architecture.name]


def test_a_new_architecture_is_one_class_and_one_registration(shifted: Architecture, sae_store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]
    assert "shifted-relu (test only)" in " ".join(train_help.split())
    out = tmp_path / "sae"
    assert main(["train", "--acts", str(sae_store), "--layer", STORE_LAYER, "--out", str(out), "--arch", "shifted-relu",
                 "--width", "64", "--l1", "1e-3", "--lr", "4e-3", "--n-tokens", "8000", "--batch-size", "256"]) == 0
    assert "saved SAE" in capsys.readouterr().out
    sae, saved = load_sae_with_config(out)
    assert saved["sae"]["activation"] == "shifted-relu" and saved["sae"]["shift"] == 0.5
    assert saved["run"]["sae"]["shift"] == 0.5
    x_nd = torch.randn(10, sae.config.d_in)
    with torch.no_grad():
        pre_nw = sae.pre_activations(sae.normalize(x_nd))
        torch.testing.assert_close(sae.encode(x_nd), (pre_nw - 0.5).relu())
    assert float(sae.threshold[0]) > 0  # its after-training step ran
    # its own field is checked like a built-in's, and other architectures do not accept it
    with pytest.raises(SAEConfigError, match="shift must be a finite number above 0"):
        SAEConfig(d_in=4, width=8, activation="shifted-relu", architecture_fields={"shift": -1.0})
    with pytest.raises(SAEConfigError, match="the topk architecture has no fields"):
        SAEConfig(d_in=4, width=8, k=4, architecture_fields={"shift": 1.0})


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(ARCHITECTURES["topk"])


def test_batchtopk_calibrates_a_threshold_giving_k_active_latents_on_average() -> None:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=64, activation="batchtopk", k=5))
    sample = torch.randn(400, 8)
    sae.config.architecture.after_training(sae, sample)
    assert float((sae.encode(sample) > 0).sum(1).double().mean()) == 5.0


def test_matryoshka_nests_a_sixteenth_and_a_quarter_unless_told_otherwise() -> None:
    assert SAEConfig(d_in=8, width=64, activation="matryoshka", k=4).nested_widths == (4, 16, 64)
    assert SAEConfig(d_in=8, width=64, activation="matryoshka", k=4, matryoshka_widths=(8, 64)).nested_widths == (8, 64)
    assert SAEConfig(d_in=8, width=64, activation="batchtopk", k=4).nested_widths == ()


def test_replace_derives_defaults_again_and_configs_hash() -> None:
    nested = SAEConfig(d_in=8, width=64, activation="matryoshka", k=4)
    assert replace(nested, width=128).nested_widths == (8, 32, 128)
    assert replace(nested, activation="batchtopk").nested_widths == ()
    jump = SAEConfig(d_in=8, width=64, activation="jumprelu")
    assert replace(jump, activation="topk", k=4).own_fields == {}
    assert jump == SAEConfig.from_dict(jump.to_dict()) and hash(jump) == hash(SAEConfig.from_dict(jump.to_dict()))
    assert nested == SAEConfig.from_dict(nested.to_dict()) and len({nested, SAEConfig.from_dict(nested.to_dict())}) == 1
