from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import traitlens.sae.training as training
from tests.sae.conftest import STORE_LAYER
from traitlens.errors import DataError, StoreError
from traitlens.sae import RunConfig, SAEConfig, TrainConfig, load_sae_with_config, sweep, train
from traitlens.sae.training import TrainingError
from traitlens.store import ActivationStore


def _config(store: Path, out: Path, *runs: RunConfig, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(acts=store, layer=STORE_LAYER, out=out, runs=runs, tokens=256 * 60, batch_size=256,
                                   warmup_steps=5, sparsity_warmup_steps=10, checkpoint_every=20, dead_after_tokens=2000)
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _tokens(store: Path) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.asarray(s) for s in ActivationStore(store).shards(STORE_LAYER)]))


def _nmse(sae: torch.nn.Module, x_nd: torch.Tensor) -> float:
    with torch.no_grad():
        _, recon = sae(x_nd)
    return float((recon - x_nd).square().sum() / (x_nd - x_nd.mean(0)).square().sum())


@pytest.mark.parametrize(
    ("activation", "coefficient", "matryoshka"),
    [("topk", 0.0, ()), ("batchtopk", 0.0, ()), ("relu", 3e-3, ()), ("jumprelu", 3e-2, ()), ("batchtopk", 0.0, (16, 64, 128))],
)
def test_every_architecture_learns(sae_store: Path, tmp_path: Path, activation: str, coefficient: float,
                                   matryoshka: tuple[int, ...]) -> None:
    run = RunConfig(SAEConfig(d_in=32, width=128, activation=activation, k=8, matryoshka_widths=matryoshka,  # type: ignore[arg-type]
                              normalization="norm"), lr=4e-3, sparsity_coefficient=coefficient)
    (directory,) = train(_config(sae_store, tmp_path / "sae", run), show_progress=False)
    sae, saved = load_sae_with_config(directory)
    x_nd = _tokens(sae_store)
    assert _nmse(sae, x_nd) < 0.35
    assert saved["metrics"]["nmse"] < 0.5 and saved["layer"] == STORE_LAYER
    l0 = float((sae.encode(x_nd) > 0).sum(1).double().mean())
    if activation == "topk":
        assert (sae.encode(x_nd) > 0).sum(1).eq(8).all() and saved["metrics"]["l0"] == 8.0
    elif activation == "batchtopk":
        assert saved["metrics"]["l0"] == 8.0 and 3 < l0 < 20  # the inference threshold keeps L0 near k
    else:
        assert l0 < 128 * 0.6  # the penalty keeps it sparse


def test_matryoshka_prefixes_reconstruct_on_their_own(sae_store: Path, tmp_path: Path) -> None:
    base = SAEConfig(d_in=32, width=128, activation="batchtopk", k=8, normalization="norm")
    runs = (RunConfig(base, lr=4e-3), RunConfig(replace(base, matryoshka_widths=(16, 128)), lr=4e-3))
    plain_dir, nested_dir = train(_config(sae_store, tmp_path / "sweep", *runs), show_progress=False)
    x_nd = _tokens(sae_store)

    def prefix_nmse(directory: Path) -> float:
        sae, _ = load_sae_with_config(directory)
        with torch.no_grad():
            latents = sae.encode(x_nd)
            latents[:, 16:] = 0
            recon = sae.decode(latents)
        return float((recon - x_nd).square().sum() / (x_nd - x_nd.mean(0)).square().sum())

    assert prefix_nmse(nested_dir) < prefix_nmse(plain_dir) - 0.05


def test_decoder_rows_stay_unit_norm_and_bias_starts_at_the_median(sae_store: Path, tmp_path: Path) -> None:
    run = RunConfig(SAEConfig(d_in=32, width=64, activation="topk", k=4))
    (directory,) = train(_config(sae_store, tmp_path / "sae", run, tokens=256 * 3), show_progress=False)
    sae, _ = load_sae_with_config(directory)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_sweep_trains_each_sae_as_if_alone(sae_store: Path, tmp_path: Path) -> None:
    base = RunConfig(SAEConfig(d_in=32, width=64, activation="topk", k=4), lr=1e-3)
    runs = sweep(base, k=(4, 8), lr=(1e-3, 3e-3))
    assert [r.name for r in runs] == ["topk_w64_k4_lr0.001", "topk_w64_k4_lr0.003", "topk_w64_k8_lr0.001", "topk_w64_k8_lr0.003"]
    config = _config(sae_store, tmp_path / "sweep", *runs, tokens=256 * 8)
    directories = train(config, show_progress=False)
    (alone,) = train(replace(config, out=tmp_path / "alone", runs=(runs[2],)), show_progress=False)
    swept, _ = load_sae_with_config(directories[2])
    single, _ = load_sae_with_config(alone)
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(swept.state_dict()[name], tensor, rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "sweep" / "train_log.jsonl").read_text().splitlines()]
    assert {entry["run"] for entry in log} == {run.name for run in runs}
    assert {"nmse", "l0", "dead_fraction", "dense_fraction", "explained_variance"} <= set(log[-1])


def _tree(root: Path) -> dict[str, object]:
    """Every output file's bytes; configs parsed, minus the output path that names the run's folder."""
    tree: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "checkpoint" not in path.parts:
            if path.name == "config.json":
                config = json.loads(path.read_text())
                del config["training"]["out"]
                tree[str(path.relative_to(root))] = config
            else:
                tree[str(path.relative_to(root))] = path.read_bytes()
    return tree


def test_kill_and_resume_ends_identical(sae_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = sweep(RunConfig(SAEConfig(d_in=32, width=64, activation="batchtopk", k=4)), lr=(1e-3, 3e-3))
    config = _config(sae_store, tmp_path / "straight", *runs, tokens=256 * 50, checkpoint_every=10, dead_after_tokens=512)
    train(config, show_progress=False)

    killed = replace(config, out=tmp_path / "killed")
    real_step = training.Trainer._train_run
    calls = {"n": 0}

    def dies_mid_run(self: training.Trainer, *args: object) -> dict[str, float]:  # type: ignore[misc]
        calls["n"] += 1
        if calls["n"] == 2 * 33 + 1:  # step 33, after the step-30 checkpoint
            raise KeyboardInterrupt
        return real_step(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(training.Trainer, "_train_run", dies_mid_run)
    with pytest.raises(KeyboardInterrupt):
        train(killed, show_progress=False)
    monkeypatch.setattr(training.Trainer, "_train_run", real_step)
    assert json.loads((killed.out / "checkpoint" / "state.json").read_text())["step"] == 30
    with pytest.raises(TrainingError, match="pass --resume to continue it"):
        train(killed, show_progress=False)
    train(killed, resume=True, show_progress=False)
    assert _tree(tmp_path / "straight") == _tree(tmp_path / "killed")


def test_two_workers_match_one_process(sae_store: Path, tmp_path: Path) -> None:
    args = ["-m", "traitlens", "train", "--acts", str(sae_store), "--layer", STORE_LAYER, "--arch", "topk", "--k", "4",
            "--width", "64", "--tokens", str(256 * 10), "--batch-size", "256", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]  # a free port: parallel runs never collide
    subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], check=True, env=env, capture_output=True)
    one, _ = load_sae_with_config(tmp_path / "one")
    two, _ = load_sae_with_config(tmp_path / "two")
    for name, tensor in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)


def test_nan_tokens_are_skipped_or_refused(sae_store: Path, tmp_path: Path) -> None:
    import shutil

    poisoned = tmp_path / "acts"
    shutil.copytree(sae_store, poisoned)
    store = ActivationStore(poisoned)
    shard = np.load(poisoned / store.layer(STORE_LAYER).shard_files[0], mmap_mode="r+")
    shard[3, 5] = np.nan
    shard[7, 0] = np.inf
    shard.flush()
    run = RunConfig(SAEConfig(d_in=32, width=64, activation="topk", k=4))
    (directory,) = train(_config(poisoned, tmp_path / "lenient", run, tokens=680 * 2, batch_size=680), show_progress=False)
    sae, _ = load_sae_with_config(directory)
    assert all(torch.isfinite(t).all() for t in sae.state_dict().values())
    with pytest.raises(DataError, match="NaN/Inf.*--strict"):
        train(_config(poisoned, tmp_path / "strict", run, tokens=680 * 2, batch_size=680, strict=True), show_progress=False)


def test_bad_inputs_are_refused_and_nothing_saved_is_lost(sae_store: Path, tmp_path: Path) -> None:
    run = RunConfig(SAEConfig(d_in=48, width=64, activation="topk", k=4))
    with pytest.raises(TrainingError, match="input width 48 does not match layer blocks.1"):
        train(_config(sae_store, tmp_path / "x", run), show_progress=False)
    with pytest.raises(StoreError, match="stored layers: blocks.1"):
        train(_config(sae_store, tmp_path / "x", run, layer="blocks.7"), show_progress=False)
    good = RunConfig(SAEConfig(d_in=32, width=64, activation="topk", k=4))
    config = _config(sae_store, tmp_path / "kept", good, tokens=256 * 25, checkpoint_every=10)
    train(config, show_progress=False)
    saved = _tree(tmp_path / "kept")
    with pytest.raises(TrainingError, match="already holds training output"):
        train(config, show_progress=False)
    assert not (tmp_path / "kept" / "checkpoint").exists()  # removed once every SAE was saved
    assert train(config, resume=True, show_progress=False) == [tmp_path / "kept"]  # complete: nothing redone
    assert _tree(tmp_path / "kept") == saved

    interrupted = replace(config, out=tmp_path / "damaged", tokens=256 * 25)
    (interrupted.out / "checkpoint").mkdir(parents=True)
    (interrupted.out / "checkpoint" / "state.json").write_text("{ not json")
    with pytest.raises(TrainingError, match="damaged checkpoint"):
        train(interrupted, resume=True, show_progress=False)
    assert (interrupted.out / "checkpoint" / "state.json").read_text() == "{ not json"
