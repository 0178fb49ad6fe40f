from __future__ import annotations

import pytest
import torch

from traitlens.sae import SAEConfig, SparseAutoencoder
from traitlens.sae.config import SAEConfigError


def _sae(**overrides: object) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(**{"d_in": 6, "width": 16, **overrides}))  # type: ignore[arg-type]
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    return sae


def test_topk_encode_keeps_exactly_k_nonnegative_latents() -> None:
    latents = _sae(activation="topk", k=3).encode(torch.randn(50, 6))
    assert (latents >= 0).all() and ((latents > 0).sum(1) <= 3).all() and ((latents > 0).sum(1) == 3).float().mean() > 0.9


def test_batchtopk_and_jumprelu_use_their_thresholds_at_inference() -> None:
    x_nd = torch.randn(30, 6)
    sae = _sae(activation="batchtopk", k=3)
    sae.threshold.fill_(0.5)
    pre = sae.pre_activations(sae.normalize(x_nd))
    torch.testing.assert_close(sae.encode(x_nd), pre * (pre > 0.5))
    jump = _sae(activation="jumprelu", architecture_fields={"jumprelu_initial_threshold": 0.3})
    pre = jump.pre_activations(jump.normalize(x_nd))
    torch.testing.assert_close(jump.encode(x_nd), pre * (pre > 0.3))


def test_jumprelu_thresholds_get_straight_through_gradients() -> None:
    sae = _sae(activation="jumprelu", architecture_fields={"jumprelu_initial_threshold": 0.3, "jumprelu_bandwidth": 0.2})
    xn_nd = torch.randn(64, 6)
    encoding = sae.encode_for_training(xn_nd)
    penalty = sae.config.architecture.sparsity_penalty(sae, encoding)
    assert penalty is not None
    (encoding.dense().sum() + penalty).backward()
    grad = sae.log_threshold.grad
    assert grad is not None
    near = ((encoding.pre_nw - 0.3).abs() < 0.1).any(0)
    assert (grad[near] != 0).all() and (grad[~near] == 0).all() and (grad[near] < 0).all()


def test_normalization_is_undone_on_decode() -> None:
    sae = _sae(activation="relu", normalization="standardize")
    sae.input_mean.copy_(torch.arange(6.0))
    sae.input_scale.fill_(0.25)
    x_nd = torch.randn(4, 6)
    torch.testing.assert_close(sae.denormalize(sae.normalize(x_nd)), x_nd)
    latents = sae.encode(x_nd)
    torch.testing.assert_close(sae.decode(latents), (latents @ sae.W_dec + sae.b_dec) / 0.25 + torch.arange(6.0))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"activation": "gated"}, "unknown SAE architecture"), ({"k": 0}, "k must be"), ({"width": 0}, "width must be an integer"),
     ({"matryoshka_widths": (8, 4, 16)}, "increase strictly"), ({"matryoshka_widths": (4, 8)}, "end at the width"),
     ({"d_in": 128.5}, "d_in must be an integer"), ({"width": True}, "width must be an integer"), ({"k": 17}, "k must be between"),
     ({"k": "4"}, "k must be an integer"), ({"matryoshka_widths": (4.0, 16)}, "list of integers"),
     ({"matryoshka_widths": [4, 16]}, "list of integers"), ({"normalization": "whiten"}, "unknown SAE normalization"),
     ({"activation": "jumprelu", "architecture_fields": {"jumprelu_bandwidth": float("nan")}},
      "jumprelu_bandwidth must be a finite number above 0"),
     ({"activation": "jumprelu", "architecture_fields": {"jumprelu_initial_threshold": 0}}, "jumprelu_initial_threshold must be"),
     ({"architecture_fields": {"jumprelu_bandwidth": 0.1}}, "the topk architecture has no fields"),
     ({"activation": "jumprelu", "architecture_fields": {"bandwidth": 0.1}}, "the jumprelu architecture has no fields")],
)
def test_inconsistent_configs_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SAEConfigError, match=message):
        SAEConfig(**{"d_in": 6, "width": 16, "k": 4, **overrides})  # type: ignore[arg-type]


def test_config_round_trips_and_rejects_unknown_fields() -> None:
    config = SAEConfig(d_in=6, width=16, activation="batchtopk", k=2, matryoshka_widths=(4, 16))
    assert SAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SAEConfigError, match="unknown SAE config fields: colour"):
        SAEConfig.from_dict({**config.to_dict(), "colour": 1})
    jump = SAEConfig(d_in=6, width=16, activation="jumprelu", architecture_fields={"jumprelu_bandwidth": 0.01})
    assert jump.to_dict()["jumprelu_bandwidth"] == 0.01 and SAEConfig.from_dict(jump.to_dict()) == jump


def test_configs_written_before_architectures_had_their_own_fields_still_read() -> None:
    # until architectures were registered, every config carried JumpReLU's two fields
    old = {"d_in": 6, "width": 16, "activation": "topk", "k": 4, "matryoshka_widths": [], "normalization": "none",
           "jumprelu_initial_threshold": 0.001, "jumprelu_bandwidth": 0.001}
    assert SAEConfig.from_dict(old) == SAEConfig(d_in=6, width=16, k=4)
    # and a Matryoshka SAE was a BatchTopK one with nested widths: it still reads as that
    nested = SAEConfig.from_dict({**old, "activation": "batchtopk", "matryoshka_widths": [4, 16]})
    assert (nested.activation, nested.matryoshka_widths) == ("batchtopk", (4, 16))


def test_config_from_json_refuses_wrong_structure() -> None:
    good = SAEConfig(d_in=6, width=16, k=4).to_dict()
    cases = {"list": [good], "widths": {**good, "matryoshka_widths": 5}, "missing": {k: v for k, v in good.items() if k != "width"}}
    messages = {"list": "must be a JSON object", "widths": "list of integers, got 5", "missing": "fields missing: width"}
    for name, data in cases.items():
        with pytest.raises(SAEConfigError, match=messages[name]):
            SAEConfig.from_dict(data)


@pytest.mark.parametrize("activation", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_state_shapes_are_the_modules_without_allocating(activation: str) -> None:
    config = SAEConfig(d_in=6, width=16, activation=activation, k=4)  # type: ignore[arg-type]
    real = {name: tuple(tensor.shape) for name, tensor in SparseAutoencoder(config).state_dict().items()}
    assert SparseAutoencoder.state_shapes(config) == real
    huge = SparseAutoencoder.state_shapes(SAEConfig(d_in=128, width=10**12, activation=activation, k=4))  # type: ignore[arg-type]
    assert huge["W_enc"] == (10**12, 128)
