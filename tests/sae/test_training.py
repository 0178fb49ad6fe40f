from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import traitlens.sae.training as training
from tests.sae.conftest import STORE_LAYER
from traitlens.errors import DataError, StoreError, TraitlensError
from traitlens.sae import RunConfig, SAEConfig, TrainConfig, load_sae_with_config, sweep, train
from traitlens.sae.logging_sinks import MetricSinks
from traitlens.sae.training import TrainingError
from traitlens.store import ActivationStore, store_from_arrays


def _config(store: Path, out: Path, *runs: RunConfig, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(acts=store, layer=STORE_LAYER, out=out, runs=runs, n_tokens=256 * 60, batch_size=256,
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
    [("topk", 0.0, ()), ("batchtopk", 0.0, ()), ("relu", 3e-3, ()), ("jumprelu", 3e-2, ()), ("batchtopk", 0.0, (16, 64, 128)),
     ("matryoshka", 0.0, ())],
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
    elif activation in ("batchtopk", "matryoshka"):
        assert saved["metrics"]["l0"] == 8.0 and 3 < l0 < 20  # the inference threshold keeps L0 near k
    else:
        assert l0 < 128 * 0.6  # the penalty keeps it sparse


@pytest.mark.parametrize(("activation", "coefficient"), [("topk", 0.0), ("batchtopk", 0.0), ("relu", 3e-3), ("jumprelu", 3e-2)])
def test_bfloat16_products_train_as_well_as_float32(sae_store: Path, tmp_path: Path, activation: str, coefficient: float) -> None:
    run = RunConfig(SAEConfig(d_in=32, width=128, activation=activation, k=8, matryoshka_widths=(32, 128),
                              normalization="norm"), lr=4e-3, sparsity_coefficient=coefficient)
    x_nd = _tokens(sae_store)
    saes = {}
    for precision in ("float32", "bfloat16"):
        (directory,) = train(_config(sae_store, tmp_path / precision, run, precision=precision, dead_after_tokens=256),
                             show_progress=False)
        saes[precision], saved = load_sae_with_config(directory)
        assert saved["training"]["precision"] == precision
        assert all(tensor.dtype == torch.float32 for tensor in saes[precision].state_dict().values())
    assert not torch.equal(saes["float32"].W_enc, saes["bfloat16"].W_enc)  # the option changes the products
    assert _nmse(saes["bfloat16"], x_nd) < _nmse(saes["float32"], x_nd) + 0.05


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
    (directory,) = train(_config(sae_store, tmp_path / "sae", run, n_tokens=256 * 3), show_progress=False)
    sae, _ = load_sae_with_config(directory)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_sweep_trains_each_sae_as_if_alone(sae_store: Path, tmp_path: Path) -> None:
    base = RunConfig(SAEConfig(d_in=32, width=64, activation="topk", k=4), lr=1e-3)
    runs = sweep(base, k=(4, 8), lr=(1e-3, 3e-3))
    assert [r.name for r in runs] == ["topk_w64_k4_lr0.001", "topk_w64_k4_lr0.003", "topk_w64_k8_lr0.001", "topk_w64_k8_lr0.003"]
    config = _config(sae_store, tmp_path / "sweep", *runs, n_tokens=256 * 8)
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


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_kill_and_resume_ends_identical(sae_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    runs = sweep(RunConfig(SAEConfig(d_in=32, width=64, activation="batchtopk", k=4)), lr=(1e-3, 3e-3))
    config = _config(sae_store, tmp_path / "straight", *runs, n_tokens=256 * 50, checkpoint_every=10, dead_after_tokens=512,
                     precision=precision)
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
        train(killed, resume=False, show_progress=False)
    monkeypatch.setattr(training.Trainer, "_train_run", real_step)
    assert json.loads((killed.out / "checkpoint" / "state.json").read_text())["step"] == 30
    with (killed.out / "train_log.jsonl").open("ab") as log:  # the kill cut the last log line short
        log.write(b'{"aux_loss": 0.0, "dead_fr')
    with pytest.raises(TrainingError, match=r"train\(\.\.\., resume=True\) continues it"):
        train(killed, resume=False, show_progress=False)
    train(killed, show_progress=False)
    assert _tree(tmp_path / "straight") == _tree(tmp_path / "killed")


def test_two_workers_match_one_process(sae_store: Path, tmp_path: Path) -> None:
    args = ["-m", "traitlens", "train", "--acts", str(sae_store), "--layer", STORE_LAYER, "--arch", "topk", "--k", "4",
            "--width", "64", "--n-tokens", str(256 * 10), "--batch-size", "256", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    # --standalone: a free port, so parallel runs never collide
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
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
    (directory,) = train(_config(poisoned, tmp_path / "lenient", run, n_tokens=680 * 2, batch_size=680), show_progress=False)
    sae, _ = load_sae_with_config(directory)
    assert all(torch.isfinite(t).all() for t in sae.state_dict().values())
    with pytest.raises(DataError, match="NaN/Inf.*--strict"):
        train(_config(poisoned, tmp_path / "strict", run, n_tokens=680 * 2, batch_size=680, strict=True), show_progress=False)


def test_bad_inputs_are_refused_and_nothing_saved_is_lost(sae_store: Path, tmp_path: Path) -> None:
    run = RunConfig(SAEConfig(d_in=48, width=64, activation="topk", k=4))
    with pytest.raises(TrainingError, match="input width 48 does not match layer blocks.1"):
        train(_config(sae_store, tmp_path / "x", run), show_progress=False)
    with pytest.raises(StoreError, match="stored layers: blocks.1"):
        train(_config(sae_store, tmp_path / "x", run, layer="blocks.7"), show_progress=False)
    good = RunConfig(SAEConfig(d_in=32, width=64, activation="topk", k=4))
    config = _config(sae_store, tmp_path / "kept", good, n_tokens=256 * 25, checkpoint_every=10)
    train(config, show_progress=False)
    saved = _tree(tmp_path / "kept")
    with pytest.raises(TrainingError, match="already holds training output"):
        train(config, resume=False, show_progress=False)
    assert not (tmp_path / "kept" / "checkpoint").exists()  # removed once every SAE was saved
    assert train(config, resume=True, show_progress=False) == [tmp_path / "kept"]  # complete: nothing redone
    assert _tree(tmp_path / "kept") == saved
    with pytest.raises(TrainingError, match="another configuration"):
        train(replace(config, n_tokens=256 * 30), resume=True, show_progress=False)
    assert _tree(tmp_path / "kept") == saved

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(TrainingError, match="holds no traitlens output"):
            train(replace(config, out=tmp_path / "foreign"), resume=resume, show_progress=False)
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["notes.txt"]

    interrupted = replace(config, out=tmp_path / "damaged", n_tokens=256 * 25)
    (interrupted.out / "checkpoint").mkdir(parents=True)
    (interrupted.out / "checkpoint" / "state.json").write_text("{ not json")
    with pytest.raises(TrainingError, match="damaged checkpoint"):
        train(interrupted, resume=True, show_progress=False)
    assert (interrupted.out / "checkpoint" / "state.json").read_text() == "{ not json"


def test_a_run_that_failed_before_its_first_step_can_start_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    store_from_arrays(tmp_path / "acts", {"l": tokens})
    run = RunConfig(SAEConfig(d_in=4, width=8, k=2))
    config = TrainConfig(acts=tmp_path / "acts", layer="l", out=tmp_path / "sae", runs=(run,), n_tokens=128, batch_size=32)

    def fails(self: training.Trainer, n_tokens: int) -> torch.Tensor:
        raise TrainingError("stop")

    with monkeypatch.context() as patch:
        patch.setattr(training.Trainer, "_sample", fails)
        with pytest.raises(TrainingError, match="stop"):
            train(config, show_progress=False)
    assert [p.name for p in config.out.iterdir()] == ["traitlens-output.json"]  # claimed, nothing trained
    assert train(config, show_progress=False) == [config.out]


def test_a_store_without_finite_tokens_is_refused(tmp_path: Path) -> None:
    store_from_arrays(tmp_path / "acts", {"l": np.full((8, 4), np.nan, dtype=np.float32)})
    config = TrainConfig(acts=tmp_path / "acts", layer="l", out=tmp_path / "sae", runs=(RunConfig(SAEConfig(d_in=4, width=8, k=2)),),
                         n_tokens=64, batch_size=8)
    with pytest.raises(TrainingError, match="no finite tokens to train on .8 stored, 8 NaN/Inf"):
        train(config, show_progress=False)
    assert not config.out.exists()


def test_the_log_drops_a_torn_last_line_and_refuses_damage(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    log.write_bytes(b'{"step": 10}\nnot a record\n{"step": 20}\n')
    with pytest.raises(TraitlensError, match="line 2 is not a log record"):
        MetricSinks(tmp_path, (), enabled=True, resume_after=10)
    assert log.read_bytes() == b'{"step": 10}\nnot a record\n{"step": 20}\n'
    log.write_bytes(b'{"step": 10}\n{"step": 20}\n{"step": 30, "lo')
    MetricSinks(tmp_path, (), enabled=True, resume_after=20).close()
    assert log.read_bytes() == b'{"step": 10}\n{"step": 20}\n'


BAD_TRAIN_FIELDS = [("n_tokens", 0, "n_tokens must be"), ("batch_size", -4, "batch_size must be"),
                    ("precision", "float16", "unknown precision 'float16'"),
                    ("batch_size", 2.5, "batch_size must be"), ("seed", -1, "seed must be"),
                    ("checkpoint_every", 0, "checkpoint_every must be"),
                    ("dead_after_tokens", -1, "dead_after_tokens must be"), ("log_every", True, "log_every must be"),
                    ("warmup_steps", -1, "warmup_steps must be"), ("final_lr_fraction", 1.5, "at most 1"),
                    ("grad_clip", float("nan"), "grad_clip must be"), ("aux_coefficient", -0.1, "aux_coefficient must be"),
                    ("aux_k", 0, "aux_k must be"), ("init_sample_tokens", "many", "init_sample_tokens must be"),
                    ("bias_init", "median", "unknown bias init"), ("log_to", ("stdout",), "unknown metrics sink 'stdout'"),
                    ("runs", (), "nothing to train"), ("runs", ("topk",), "tuple of RunConfig")]


@pytest.mark.parametrize(("name", "value", "message"), BAD_TRAIN_FIELDS)
def test_train_configs_refuse_bad_values(tmp_path: Path, name: str, value: object, message: str) -> None:
    run = RunConfig(SAEConfig(d_in=4, width=8, k=2))
    fields: dict[str, object] = dict(acts=tmp_path, layer="l", out=tmp_path / "sae", runs=(run,), n_tokens=64)
    with pytest.raises(TrainingError, match=message):
        TrainConfig(**{**fields, name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [("lr", 0.0), ("lr", float("inf")), ("lr", "3e-4"), ("sparsity_coefficient", -1.0),
                                             ("sae", {"d_in": 4})])
def test_run_configs_refuse_bad_values(name: str, value: object) -> None:
    fields: dict[str, object] = {"sae": SAEConfig(d_in=4, width=8, k=2), name: value}
    with pytest.raises(TrainingError, match="SAEConfig" if name == "sae" else name.replace("_", " ")):
        RunConfig(**fields)  # type: ignore[arg-type]


def test_a_finished_run_of_the_previous_release_is_recognized(sae_store: Path, tmp_path: Path) -> None:
    # until SAE architectures had their own fields, every run's SAE config carried JumpReLU's two
    config = _config(sae_store, tmp_path / "old", RunConfig(SAEConfig(d_in=32, width=64, k=4)), n_tokens=256 * 10)
    train(config, show_progress=False)
    path = config.out / "config.json"
    saved = json.loads(path.read_text())
    for sae in (saved["sae"], saved["training"]["runs"][0]["sae"]):
        sae.update(jumprelu_initial_threshold=0.001, jumprelu_bandwidth=0.001)
    saved["training"]["tokens"] = saved["training"].pop("n_tokens")  # and the token count was named tokens
    del saved["training"]["precision"]  # and every run was float32
    path.write_text(json.dumps(saved))
    before = _tree(config.out)
    assert train(config, show_progress=False) == [config.out] and _tree(config.out) == before


def test_a_sweep_killed_while_saving_is_trained_again_and_another_store_is_refused(sae_store: Path, tmp_path: Path) -> None:
    runs = sweep(RunConfig(SAEConfig(d_in=32, width=64, k=4)), k=(2, 4))
    config = _config(sae_store, tmp_path / "sweep", *runs, n_tokens=256 * 10)
    first, second = train(config, show_progress=False)
    whole = _tree(config.out)
    shutil.rmtree(second)  # killed after saving the first SAE, before the second
    assert train(config, show_progress=False) == [first, second] and _tree(config.out) == whole


def test_saved_saes_of_a_store_extracted_again_are_not_taken_for_this_run(tmp_path: Path) -> None:
    acts = tmp_path / "acts"
    store_from_arrays(acts, {"l": np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)}, source="model-a")
    config = TrainConfig(acts=acts, layer="l", out=tmp_path / "sae", runs=(RunConfig(SAEConfig(d_in=4, width=8, k=2)),),
                         n_tokens=128, batch_size=32)
    train(config, show_progress=False)
    before = _tree(config.out)
    shutil.rmtree(acts)  # the same --acts, extracted again from other activations
    store_from_arrays(acts, {"l": np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)}, source="model-b")
    with pytest.raises(TrainingError, match="another configuration or store"):
        train(config, show_progress=False)
    assert _tree(config.out) == before

