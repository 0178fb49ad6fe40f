"""Imported SAEs agree with their peers: SAELens' own encode/decode, saev's math written out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from traitlens.cli import main
from traitlens.sae import SAEConfig, SparseAutoencoder, load_sae_with_config, save_sae
from traitlens.sae.importers import SAEImportError, import_sae, import_saelens, import_saev

D_IN, WIDTH, K = 16, 64, 4
# float32 agreement: reconstructions sum ~64 terms of size ~10, so absolute rounding reaches ~1e-5
TIGHT = {"rtol": 1e-5, "atol": 1e-4}


def _inputs(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def _assert_one_line_error(match: str, call: Callable[[], Any]) -> None:
    with pytest.raises(SAEImportError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)


# -- SAELens ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sl() -> ModuleType:
    import sae_lens  # a test dependency (pyproject's test extra): never skipped

    return sae_lens


def _randomize(sae: Any, seed: int = 1) -> Any:
    """Every parameter random and non-trivial (decoder rows not unit-norm, biases far from zero);
    thresholds mostly positive, a few zero or negative, where SAELens' ReLU comes first."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if name.startswith("b_") else 1.0))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(WIDTH, generator=generator) * 2)
            sae.threshold[:3] = torch.tensor([0.0, -0.5, -2.0])
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold.fill_(1.3)
    return sae.eval()


def _assert_agrees(ours: SparseAutoencoder, theirs: Any, x_nd: torch.Tensor) -> None:
    with torch.no_grad():
        latents_nw = theirs.encode(x_nd)
        torch.testing.assert_close(ours.encode(x_nd), latents_nw, **TIGHT)
        torch.testing.assert_close(ours.decode(latents_nw), theirs.decode(latents_nw), **TIGHT)
        torch.testing.assert_close(ours(x_nd)[1], theirs(x_nd), **TIGHT)
    assert 0 < (latents_nw != 0).float().mean() < 1  # the comparison saw both active and silent latents


INFERENCE_SAES = {
    "standard": lambda sl, **kw: sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=WIDTH, **kw)),
    "topk": lambda sl, **kw: sl.TopKSAE(sl.TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=K, **kw)),
    "topk_rescaled": lambda sl, **kw: sl.TopKSAE(sl.TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=K, rescale_acts_by_decoder_norm=True, **kw)),
    "jumprelu": lambda sl, **kw: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D_IN, d_sae=WIDTH, **kw)),
}
OUR_ACTIVATION = {"standard": "relu", "topk": "topk", "topk_rescaled": "topk", "jumprelu": "jumprelu"}


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@pytest.mark.parametrize("kind", list(INFERENCE_SAES))
def test_saelens_inference_saes_agree(sl: ModuleType, tmp_path: Path, kind: str, apply_b_dec_to_input: bool) -> None:
    theirs = _randomize(INFERENCE_SAES[kind](sl, apply_b_dec_to_input=apply_b_dec_to_input))
    theirs.save_model(tmp_path / "sae")
    ours, extra = import_saelens(tmp_path / "sae")
    assert ours.config.activation == OUR_ACTIVATION[kind] and ours.config.width == WIDTH
    assert extra["imported"]["source"] == "saelens" and extra["imported"]["config"]["architecture"] == kind.split("_")[0]
    assert any("b_dec" in note for note in extra["imported"]["conversions"]) != apply_b_dec_to_input
    _assert_agrees(ours, theirs, _inputs())


@pytest.mark.parametrize("matryoshka", [False, True])
def test_saelens_batchtopk_training_checkpoint_and_inference_save_agree(sl: ModuleType, tmp_path: Path, matryoshka: bool) -> None:
    if matryoshka:
        cfg = sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=WIDTH, k=K, matryoshka_widths=[16, WIDTH],
                                                      apply_b_dec_to_input=False)
        training = _randomize(sl.MatryoshkaBatchTopKTrainingSAE(cfg))
    else:
        training = _randomize(sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=WIDTH, k=K)))
    training.save_model(tmp_path / "checkpoint")
    training.save_inference_model(tmp_path / "inference")
    # the checkpoint's own encode is batch-coupled; SAELens' inference form is the reference
    theirs = sl.SAE.load_from_disk(tmp_path / "inference").eval()
    for directory in ("checkpoint", "inference"):
        ours, _ = import_saelens(tmp_path / directory)
        assert ours.config.activation == "batchtopk" and ours.config.k == K
        assert ours.config.matryoshka_widths == ((16, WIDTH) if matryoshka else ())
        _assert_agrees(ours, theirs, _inputs())


def test_saelens_activation_scaling_factor_becomes_input_scale(sl: ModuleType, tmp_path: Path) -> None:
    cfg = sl.StandardSAEConfig(d_in=D_IN, d_sae=WIDTH, normalize_activations="expected_average_only_in", apply_b_dec_to_input=False)
    _randomize(sl.StandardSAE(cfg)).save_model(tmp_path)
    _assert_one_line_error("no scaling_factor in activation_scaler.json", lambda: import_saelens(tmp_path))
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.37, "has_whitening": False}))
    ours, _ = import_saelens(tmp_path)
    assert ours.config.normalization == "norm"
    theirs = sl.SAE.load_from_disk(tmp_path)
    theirs.fold_activation_norm_scaling_factor(0.37)  # what SAELens does when training ends
    _assert_agrees(ours, theirs.eval(), _inputs())


def test_saelens_pre_6_config_and_finetuning_scaling_factor(sl: ModuleType, tmp_path: Path) -> None:
    theirs = _randomize(sl.TopKSAE(sl.TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=K)))
    theirs.save_model(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({  # the shape of a SAELens 5.x cfg.json
        "d_in": D_IN, "d_sae": WIDTH, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
        "hook_point": "blocks.3.hook_resid_pre", "normalize_activations": False, "finetuning_scaling_factor": True}))
    scale_w = torch.rand(WIDTH, generator=torch.Generator().manual_seed(2)) + 0.5
    save_file({**load_file(tmp_path / "sae_weights.safetensors"), "scaling_factor": scale_w}, tmp_path / "sae_weights.safetensors")
    ours, extra = import_saelens(tmp_path)
    assert ours.config.activation == "topk" and extra["imported"]["hook_name"] == "blocks.3.hook_resid_pre"
    x_nd = _inputs()
    with torch.no_grad():
        latents_nw = theirs.encode(x_nd)
        torch.testing.assert_close(ours.encode(x_nd), latents_nw, **TIGHT)
        torch.testing.assert_close(ours.decode(latents_nw), theirs.decode(latents_nw * scale_w), **TIGHT)


def test_imported_saelens_sae_survives_save_and_load(sl: ModuleType, tmp_path: Path) -> None:
    theirs = _randomize(INFERENCE_SAES["jumprelu"](sl))
    theirs.save_model(tmp_path / "peer")
    ours, extra = import_sae(tmp_path / "peer")
    save_sae(ours, tmp_path / "ours", extra)
    loaded, saved = load_sae_with_config(tmp_path / "ours")
    assert saved["imported"]["source"] == "saelens"
    _assert_agrees(loaded, theirs, _inputs())
    again, extra_again = import_sae(tmp_path / "ours")  # a traitlens directory is loaded as it is
    assert extra_again == extra and torch.equal(again.W_enc, ours.W_enc)


@pytest.mark.parametrize(("mode", "match"), [("layer_norm", "'layer_norm' standardizes every token"),
                                              ("constant_norm_rescale", "'constant_norm_rescale' rescales"),
                                              ("covariance_whitening", "import the final SAE")])
def test_saelens_run_time_normalizations_are_refused(sl: ModuleType, tmp_path: Path, mode: str, match: str) -> None:
    _randomize(INFERENCE_SAES["standard"](sl)).save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": mode}))
    _assert_one_line_error(match, lambda: import_saelens(tmp_path))


def test_saelens_damaged_or_foreign_saves_give_one_line(sl: ModuleType, tmp_path: Path) -> None:
    sl.GatedSAE(sl.GatedSAEConfig(d_in=D_IN, d_sae=WIDTH)).save_model(tmp_path / "gated")
    _assert_one_line_error("architecture 'gated' cannot be expressed", lambda: import_saelens(tmp_path / "gated"))
    directory = tmp_path / "standard"
    _randomize(INFERENCE_SAES["standard"](sl)).save_model(directory)
    cfg_text, weights = (directory / "cfg.json").read_text(), (directory / "sae_weights.safetensors").read_bytes()
    (directory / "cfg.json").write_text(json.dumps({**json.loads(cfg_text), "d_sae": 32}))
    _assert_one_line_error(r"tensor W_enc has shape \(16, 64\), expected \(16, 32\)", lambda: import_saelens(directory))
    (directory / "cfg.json").write_text("{")
    _assert_one_line_error("cfg.json: damaged JSON", lambda: import_saelens(directory))
    (directory / "cfg.json").write_text(cfg_text)
    (directory / "sae_weights.safetensors").write_bytes(weights[: len(weights) // 2])
    _assert_one_line_error("sae_weights.safetensors: cannot read the weights", lambda: import_saelens(directory))
    (directory / "sae_weights.safetensors").unlink()
    _assert_one_line_error("sae_weights.safetensors missing", lambda: import_saelens(directory))


# -- saev ---------------------------------------------------------------------------------------
def _dump_saev(path: Path, header: dict[str, Any], state: dict[str, Any]) -> Path:
    """A checkpoint written the way saev's ``dump`` writes one: a JSON header line, then
    ``torch.save`` of the state dict into the same open file (saev 0.1.0 ``saev/nn.py`` and
    ``src/saev/nn/modeling.py`` up to ``SCHEMA_VERSION = 5``; the headers below copy their fields)."""
    with path.open("wb") as handle:
        handle.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, handle)
    return path


def _saev_state(seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, WIDTH, generator=generator), "b_enc": torch.randn(WIDTH, generator=generator) + 1,
            "W_dec": torch.randn(WIDTH, D_IN, generator=generator), "b_dec": torch.randn(D_IN, generator=generator)}


# saev 0.1.0 (PyPI, 2025-04): ``vars(cfg)`` of saev.config.SparseAutoencoder, no schema
LEGACY_HEADER = {"d_vit": D_IN, "exp_factor": WIDTH // D_IN, "sparsity_coeff": 4e-4, "n_reinit_samples": 1024,
                 "ghost_grads": False, "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0}


def _schema5_header(activation: str, **params: Any) -> dict[str, Any]:
    """saev's current header: ``activation`` as nested ``{"cls", "params"}`` dataclasses."""
    no_sparsity = {"cls": "NoSparsity", "params": {"key": "no-sparsity"}}
    aux = {"cls": "AuxK", "params": {"key": "auxk", "k_aux": 512, "alpha": 1 / 32}}
    cfg = {"d_model": D_IN, "d_sae": WIDTH, "activation": {"cls": activation, "params": {"sparsity": no_sparsity, "aux": aux, **params}},
           "reinit_blend": 0.8, "reinit_enc_dec_tranpose": True, "remove_parallel_grads": True, "normalize_w_dec": True}
    return {"schema": 5, "cfg": cfg, "commit": "0123abc", "lib": "1.0.0"}


def _assert_encodes(ours: SparseAutoencoder, state: dict[str, torch.Tensor], x_nd: torch.Tensor, latents_nw: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x_nd), latents_nw, **TIGHT)
        torch.testing.assert_close(ours.decode(latents_nw), latents_nw @ state["W_dec"] + state["b_dec"], **TIGHT)
    assert 0 < (latents_nw != 0).float().mean() < 1


def test_saev_legacy_relu_subtracts_b_dec(tmp_path: Path) -> None:
    state, x_nd = _saev_state(), _inputs()
    ours, extra = import_saev(_dump_saev(tmp_path / "sae.pt", LEGACY_HEADER, state))
    assert ours.config.activation == "relu" and extra["imported"]["schema"] is None
    _assert_encodes(ours, state, x_nd, torch.relu((x_nd - state["b_dec"]) @ state["W_enc"] + state["b_enc"]))


@pytest.mark.parametrize("activation", ["Relu", "TopK", "BatchTopK"])
def test_saev_schema5_activations(tmp_path: Path, activation: str) -> None:
    state, x_nd = _saev_state(), _inputs()
    if activation == "BatchTopK":
        state["activation.threshold"] = torch.tensor(1.7)
    ours, _ = import_saev(_dump_saev(tmp_path / "sae.pt", _schema5_header(activation, top_k=K), state))
    pre_nw = x_nd @ state["W_enc"] + state["b_enc"]  # current saev does not subtract b_dec
    if activation == "Relu":
        latents_nw = torch.relu(pre_nw)
    elif activation == "TopK":
        assert (pre_nw.topk(K).values > 0).all()  # where saev's unrectified top k equals ours
        latents_nw = torch.zeros_like(pre_nw).scatter(1, pre_nw.topk(K).indices, 1.0) * pre_nw
    else:
        latents_nw = torch.where(pre_nw > 1.7, pre_nw, 0.0)
    assert ours.config.activation == {"Relu": "relu", "TopK": "topk", "BatchTopK": "batchtopk"}[activation]
    _assert_encodes(ours, state, x_nd, latents_nw)


@pytest.mark.parametrize("subtract_b_dec", [True, False])
def test_saev_schema1_needs_to_be_told_about_b_dec(tmp_path: Path, subtract_b_dec: bool) -> None:
    header = {"schema": 1, "cfg": {k: v for k, v in LEGACY_HEADER.items() if k not in ("sparsity_coeff", "ghost_grads")},
              "cls": "Relu", "commit": "abc1234", "lib": "0.1.0"}
    path, state, x_nd = _dump_saev(tmp_path / "sae.pt", header, _saev_state()), _saev_state(), _inputs()
    _assert_one_line_error("commit abc1234.*subtract_b_dec", lambda: import_saev(path))
    ours, _ = import_sae(path, subtract_b_dec=subtract_b_dec)
    centered_nd = x_nd - state["b_dec"] if subtract_b_dec else x_nd
    _assert_encodes(ours, state, x_nd, torch.relu(centered_nd @ state["W_enc"] + state["b_enc"]))


_unpickled: list[str] = []


def _record_unpickling() -> str:
    _unpickled.append("ran")
    return "payload"


class _Payload:
    """Runs code when unpickled: what a weights-only reader must refuse."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record_unpickling, ())


def test_saev_damaged_or_foreign_files_give_one_line(tmp_path: Path) -> None:
    path = tmp_path / "sae.pt"
    _dump_saev(path, LEGACY_HEADER, {**_saev_state(), "extra": _Payload()})
    _assert_one_line_error("objects other than tensors, which are never unpickled", lambda: import_saev(path))
    assert not _unpickled
    _dump_saev(path, LEGACY_HEADER, _saev_state())
    path.write_bytes(path.read_bytes()[:-200])
    _assert_one_line_error("cannot read the weights after the header", lambda: import_saev(path))
    path.write_bytes(b"\x80\x02 not json\n" + bytes(64))
    _assert_one_line_error("first line is not a JSON header", lambda: import_sae(path))
    _dump_saev(path, _schema5_header("BatchTopK", top_k=K), _saev_state())
    _assert_one_line_error("no inference threshold", lambda: import_saev(path))
    _dump_saev(path, _schema5_header("AbsBatchTopK", top_k=K), _saev_state())
    _assert_one_line_error("activation 'AbsBatchTopK' cannot be expressed", lambda: import_saev(path))
    _dump_saev(path, {**_schema5_header("Relu"), "schema": 9}, _saev_state())
    _assert_one_line_error("unknown saev header schema 9", lambda: import_saev(path))


def test_import_sae_says_what_it_cannot_recognize(tmp_path: Path) -> None:
    _assert_one_line_error("no cfg.json .SAELens. or config.json", lambda: import_sae(tmp_path))
    _assert_one_line_error("no such file or directory", lambda: import_sae(tmp_path / "nowhere"))
    save_sae(SparseAutoencoder(SAEConfig(d_in=D_IN, width=WIDTH)), tmp_path / "ours", {"layer": "blocks.1"})
    sae, extra = import_sae(tmp_path / "ours")
    assert extra == {"layer": "blocks.1"} and sae.config.width == WIDTH


def test_import_sae_command_records_the_layer_and_never_overwrites(sl: ModuleType, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    theirs = _randomize(INFERENCE_SAES["topk"](sl))
    theirs.save_model(tmp_path / "peer")
    command = ["import-sae", "--from", str(tmp_path / "peer"), "--out", str(tmp_path / "ours"), "--layer", "blocks.9"]
    assert main(command) == 0
    assert "imported" in capsys.readouterr().out
    loaded, saved = load_sae_with_config(tmp_path / "ours")
    assert saved["layer"] == "blocks.9" and saved["imported"]["source"] == "saelens"
    _assert_agrees(loaded, theirs, _inputs())
    weights_before = (tmp_path / "ours" / "sae.safetensors").read_bytes()
    assert main(command) == 2
    assert "already holds a traitlens import-sae result; pass --overwrite" in capsys.readouterr().err
    assert main(["import-sae", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (tmp_path / "ours" / "sae.safetensors").read_bytes() == weights_before
    assert not (tmp_path / "x").exists()  # a bad source is refused before --out is made

    # --overwrite replaces this command's own output, and never a folder it did not write
    save_sae(SparseAutoencoder(SAEConfig(d_in=D_IN, width=WIDTH)), tmp_path / "trained", {"layer": "blocks.1"})
    foreign_before = (tmp_path / "trained" / "sae.safetensors").read_bytes()
    other = ["import-sae", "--from", str(tmp_path / "peer"), "--out", str(tmp_path / "trained"), "--overwrite"]
    assert main(other) == 2
    assert "holds no traitlens output" in capsys.readouterr().err
    assert (tmp_path / "trained" / "sae.safetensors").read_bytes() == foreign_before
    assert main(["import-sae", "--from", str(tmp_path / "trained"), "--out", str(tmp_path / "ours"), "--overwrite"]) == 0
    replaced, saved = load_sae_with_config(tmp_path / "ours")
    assert "imported" not in saved and torch.equal(replaced.W_dec, load_sae_with_config(tmp_path / "trained")[0].W_dec)
