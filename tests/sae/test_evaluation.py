"""SAE evaluation: reconstruction metrics against direct computation, downstream fidelity on the real
pretrained MobileNetV2 with SAEs whose answers are known, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tests.pretrained import mobilenet_checkpoint
from traitlens.backbones.layout import TokenLayout
from traitlens.cli import main
from traitlens.sae import SAEConfig, SparseAutoencoder, save_sae
from traitlens.sae.evaluation import (
    EvaluateConfig,
    EvaluationError,
    _DownstreamTotals,
    evaluate,
    format_metrics,
    reconstruction_metrics,
    splice,
)
from traitlens.store import ActivationStore, ExtractConfig, extract
from traitlens.store.arrays import store_from_arrays

from .conftest import STORE_LAYER, STORE_MODEL


def _random_sae(d_in: int, width: int, activation: str = "topk", k: int = 4, seed: int = 0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, activation=activation, k=k))  # type: ignore[arg-type]
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _identity_sae(d_in: int) -> SparseAutoencoder:
    """relu(x) - relu(-x) = x: latents [I; -I] reconstruct any input exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=2 * d_in, activation="relu"))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_dec.zero_()
    return sae


def test_reconstruction_metrics_do_not_depend_on_the_row_order(sae_store: Path, tmp_path: Path) -> None:
    """The fixture store holds its rows image after image (the default); the same images with
    shuffled rows give the very same metrics."""
    extract(ExtractConfig(model=STORE_MODEL, data=sae_store.parent / "images", layers=("1",), out=tmp_path / "acts",
                          pretrained=False, tokens="all", dtype="float32", batch_size=8, images_per_shard=16,
                          row_order="shuffled"), show_progress=False)
    shuffled, image = ActivationStore(tmp_path / "acts"), ActivationStore(sae_store)
    assert shuffled.row_order.shuffled and not image.row_order.shuffled
    sae = _random_sae(image.layer(STORE_LAYER).width, 48)
    metrics = [reconstruction_metrics(sae, store, store.layer(STORE_LAYER), batch_size=37) for store in (shuffled, image)]
    assert metrics[0] == metrics[1]


def test_reconstruction_metrics_match_a_direct_computation(sae_store: Path, tmp_path: Path) -> None:
    store = ActivationStore(sae_store)
    sae = _random_sae(store.layer(STORE_LAYER).width, 48)
    save_sae(sae, tmp_path / "sae", {"layer": STORE_LAYER})
    # a batch size that splits shards unevenly
    metrics = evaluate(EvaluateConfig(sae=tmp_path / "sae", acts=sae_store, out=tmp_path / "m", batch_size=37,
                                      device="cpu", show_progress=False))
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == metrics
    x_nd = torch.from_numpy(np.concatenate([np.asarray(s) for s in store.shards(STORE_LAYER)])).double()
    with torch.no_grad():
        latents_nw, recon_nd = sae(x_nd.float())
    mean_d = x_nd.mean(0)
    recon = metrics["reconstruction"]
    assert recon["n_tokens"] == len(x_nd) == 40 * 17
    assert recon["nmse"] == pytest.approx(float((recon_nd.double() - x_nd).square().sum() / (x_nd - mean_d).square().sum()), rel=1e-6)
    residual_nd = x_nd - recon_nd.double()
    expected = 1 - residual_nd.var(0, unbiased=False).sum() / x_nd.var(0, unbiased=False).sum()
    assert recon["explained_variance"] == pytest.approx(float(expected), rel=1e-6)
    assert recon["l0"] == pytest.approx(4.0)  # TopK: exactly k per token
    frequency_w = (latents_nw != 0).double().mean(0)
    np.testing.assert_allclose(recon["latent_frequency"], frequency_w.numpy(), rtol=1e-12)
    assert recon["dead_latents"] == int((frequency_w == 0).sum())
    assert recon["dense_latents"] == int((frequency_w > 0.1).sum())
    mean_activation_w = latents_nw.double().sum(0) / (latents_nw != 0).sum(0).clamp_min(1)
    np.testing.assert_allclose(recon["latent_mean_activation"], mean_activation_w.numpy(), rtol=1e-5)
    assert "downstream" not in metrics and "NMSE" in format_metrics(metrics)


def test_identity_sae_has_zero_error_and_counts_dead_latents(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(300, 6)).astype(np.float32)
    acts[:, 5] = np.abs(acts[:, 5])  # never negative: its "-x" latent never fires
    store_from_arrays(tmp_path / "acts", {"layer": acts})
    save_sae(_identity_sae(6), tmp_path / "sae", {"layer": "layer"})
    recon = evaluate(EvaluateConfig(sae=tmp_path / "sae", acts=tmp_path / "acts", batch_size=64, device="cpu",
                                    show_progress=False))["reconstruction"]
    assert recon["nmse"] < 1e-12 and recon["explained_variance"] == pytest.approx(1.0)
    assert recon["dead_latents"] == 1 and recon["dense_latents"] == 11
    assert recon["l0"] == pytest.approx(6.0)


def test_nan_tokens_are_skipped_and_counted_or_refused_when_strict(tmp_path: Path) -> None:
    acts = np.random.default_rng(2).normal(size=(100, 6)).astype(np.float32)
    acts[[3, 50], 2] = np.nan
    acts[70, 0] = np.inf
    store_from_arrays(tmp_path / "acts", {"layer": acts})
    save_sae(_identity_sae(6), tmp_path / "sae", {"layer": "layer"})
    config = EvaluateConfig(sae=tmp_path / "sae", acts=tmp_path / "acts", batch_size=32, device="cpu", show_progress=False)
    recon = evaluate(config)["reconstruction"]
    assert recon["n_nonfinite_skipped"] == 3 and recon["n_tokens"] == 97
    with pytest.raises(EvaluationError, match="NaN/Inf"):
        evaluate(EvaluateConfig(**{**config.__dict__, "strict": True}))


def test_splice_replaces_only_the_selected_tokens() -> None:
    layout = TokenLayout(n_prefix=2, grid_hw=(2, 3), has_cls=True)
    tokens_btd = torch.randn(2, 8, 4)
    patch = splice(tokens_btd, layout, "patch", torch.zeros_like)
    assert torch.equal(patch[:, :2], tokens_btd[:, :2]) and not patch[:, 2:].any()
    cls = splice(tokens_btd, layout, "cls", lambda t_nd: t_nd + 1)
    assert torch.equal(cls[:, 0], tokens_btd[:, 0] + 1) and torch.equal(cls[:, 1:], tokens_btd[:, 1:])
    assert not splice(tokens_btd, layout, "all", torch.zeros_like).any()


@pytest.fixture(scope="module")
def mobilenet_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos in folders named by their ImageNet class, through the real pretrained MobileNetV2."""
    root = tmp_path_factory.mktemp("mobilenet")
    for folder, photo in (("Egyptian cat", "chelsea"), ("espresso", "coffee"), ("unrelated", "astronaut")):
        (root / "images" / folder).mkdir(parents=True)
        Image.fromarray(getattr(skimage.data, photo)()).save(root / "images" / folder / f"{photo}.png")
    extract(ExtractConfig(model="torchvision:mobilenet_v2", weights=mobilenet_checkpoint(), data=root / "images",
                          layers=("features.13",), out=root / "acts", dtype="float32", device="cpu"), show_progress=False)
    return root


def _downstream(root: Path, sae: SparseAutoencoder, name: str, **options: object) -> dict:
    save_sae(sae, root / name, {"layer": "features.13"})
    config = EvaluateConfig(sae=root / name, acts=root / "acts", model="torchvision:mobilenet_v2",
                            weights=mobilenet_checkpoint(), device="cpu", show_progress=False, **options)  # type: ignore[arg-type]
    return evaluate(config)["downstream"]


def test_an_exact_reconstruction_recovers_everything(mobilenet_store: Path) -> None:
    downstream = _downstream(mobilenet_store, _identity_sae(96), "identity", image_batch_size=2)
    assert downstream["n_images"] == 3 and downstream["n_labeled"] == 2  # "unrelated" is no ImageNet class
    assert downstream["kl_spliced"] < 1e-8 < 0.01 < downstream["kl_zero_ablated"]
    assert downstream["fraction_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert downstream["top1_agreement_spliced"] == 1.0
    assert downstream["accuracy"]["clean"] == downstream["accuracy"]["spliced"] == 1.0  # cat and espresso
    assert downstream["accuracy"]["zero_ablated"] < 1.0
    assert downstream["accuracy_recovered"] == pytest.approx(1.0)


def test_a_reconstruction_of_zeros_recovers_nothing(mobilenet_store: Path) -> None:
    sae = _identity_sae(96)
    with torch.no_grad():
        sae.W_dec.zero_()
    downstream = _downstream(mobilenet_store, sae, "zeros", max_images=2)
    assert downstream["n_images"] == 2
    assert downstream["kl_spliced"] == pytest.approx(downstream["kl_zero_ablated"], rel=1e-9)
    assert downstream["fraction_recovered"] == pytest.approx(0.0, abs=1e-9)


def test_a_model_other_than_the_stores_is_refused(mobilenet_store: Path) -> None:
    save_sae(_identity_sae(96), mobilenet_store / "other", {"layer": "features.13"})
    config = EvaluateConfig(sae=mobilenet_store / "other", acts=mobilenet_store / "acts", model="torchvision:mobilenet_v2",
                            pretrained=False, device="cpu", show_progress=False)
    with pytest.raises(EvaluationError, match="differ from those the store was extracted with"):
        evaluate(config)


def test_evaluate_cli_and_its_bad_inputs(capsys: pytest.CaptureFixture[str], sae_store: Path, tmp_path: Path) -> None:
    width = ActivationStore(sae_store).layer(STORE_LAYER).width
    save_sae(_random_sae(width, 48), tmp_path / "sae", {"layer": STORE_LAYER})
    assert main(["evaluate", "--sae", str(tmp_path / "sae"), "--acts", str(sae_store), "--out", str(tmp_path / "m"),
                 "--device", "cpu"]) == 0
    assert "NMSE" in capsys.readouterr().out and (tmp_path / "m" / "metrics.json").is_file()

    save_sae(_random_sae(width + 1, 48), tmp_path / "wide", {"layer": STORE_LAYER})
    save_sae(_random_sae(width, 48), tmp_path / "nolayer")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    cases = {
        "wide": "reads 33-dim tokens",
        "nolayer": "pass --layer",
        "damaged": "damaged SAE config",
    }
    for name, message in cases.items():
        assert main(["evaluate", "--sae", str(tmp_path / name), "--acts", str(sae_store), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["evaluate", "--sae", str(tmp_path / "sae"), "--acts", str(sae_store), "--layer", "blocks.7",
                 "--out", str(tmp_path / "x")]) == 2
    assert "stored layers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("name", "value"), [("batch_size", 0), ("image_batch_size", -1), ("max_images", 0), ("max_images", 2.5)])
def test_evaluate_configs_refuse_bad_counts(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(EvaluationError, match=f"{name} must be an integer of at least 1"):
        EvaluateConfig(sae=tmp_path, acts=tmp_path, **{name: value})  # type: ignore[arg-type]


def test_downstream_fidelity_on_no_images_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="no stored images"):
        _DownstreamTotals().finish()
