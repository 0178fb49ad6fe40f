"""``traitlens evaluate --head``: downstream SAE fidelity measured on a probe instead of the model's head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.sae.test_evaluation import _identity_sae
from traitlens.cli import main
from traitlens.heads import ProbeConfig, train_probe
from traitlens.heads.probe import pooled_store_features
from traitlens.sae import save_sae
from traitlens.store import ActivationStore

from .conftest import HEAD_MODEL


def _evaluate(colour_store: Path, tmp_path: Path, *extra: str) -> int:
    return main(["evaluate", "--sae", str(tmp_path / "sae"), "--acts", str(colour_store), "--out", str(tmp_path / "m"),
                 "--device", "cpu", *extra])


def test_evaluate_measures_fidelity_on_a_probe(capsys: pytest.CaptureFixture[str], colour_store: Path, tmp_path: Path) -> None:
    save_sae(_identity_sae(32), tmp_path / "sae", {"layer": "blocks.1"})
    head = train_probe(ProbeConfig(acts=colour_store, out=tmp_path / "probe", layer="blocks.1", pooling="mean"))
    model = ["--model", HEAD_MODEL, "--random-init"]

    # the random-init model has no named classes: without a probe there is nothing to measure against
    assert _evaluate(colour_store, tmp_path, *model) == 2
    assert "no classification head with known classes" in capsys.readouterr().err

    assert _evaluate(colour_store, tmp_path, *model, "--head", str(tmp_path / "probe")) == 0
    assert f"with the probe {tmp_path / 'probe'}" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    downstream = metrics["downstream"]
    assert metrics["head"] == str(tmp_path / "probe")
    assert downstream["n_images"] == downstream["n_labeled"] == 36  # every colour label is a probe class
    assert downstream["kl_spliced"] < 1e-8 < 0.01 < downstream["kl_zero_ablated"]
    assert downstream["fraction_recovered"] == pytest.approx(1.0, abs=1e-6)

    store = ActivationStore(colour_store)
    labels_n = torch.tensor([head.class_names.index(str(image.label)) for image in store.images])
    stored_bc = head.logits(pooled_store_features(store, store.layer("blocks.1"), "mean"))
    assert downstream["accuracy"]["clean"] == downstream["accuracy"]["spliced"] == float((stored_bc.argmax(-1) == labels_n).double().mean())


def test_evaluate_refuses_a_probe_it_cannot_use(capsys: pytest.CaptureFixture[str], colour_store: Path, tmp_path: Path) -> None:
    save_sae(_identity_sae(32), tmp_path / "sae", {"layer": "blocks.1"})
    train_probe(ProbeConfig(acts=colour_store, out=tmp_path / "early", layer="blocks.0"))
    cases = {
        "reads layer blocks.0, before the SAE's layer blocks.1": ["--model", HEAD_MODEL, "--random-init",
                                                                  "--head", str(tmp_path / "early")],
        "--head needs --model": ["--head", str(tmp_path / "early")],
        "head.json missing": ["--model", HEAD_MODEL, "--random-init", "--head", str(tmp_path / "sae")],
    }
    for message, extra in cases.items():
        assert _evaluate(colour_store, tmp_path, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m" / "metrics.json").exists()
