"""Local weights files (safetensors, or torch files without pickled code) and one-line failures."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.backbones.builders import CodeRunningPayload, save_state_dict
from traitlens.backbones.spec import LoadRequest, parse_spec
from traitlens.backbones.weights import (
    build_model,
    fixed_seed,
    hub_offline_when_unreachable,
    load_into,
    reachable,
    read_state_dict,
    weights_only_loads,
)
from traitlens.errors import LayerError, SpecError, WeightsUnavailableError


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_reads_tensors_from_safetensors_and_torch_files(tmp_path: Path, suffix: str) -> None:
    state = _model().state_dict()
    path = save_state_dict(state, tmp_path / f"weights{suffix}")

    _assert_same_state(read_state_dict(path), state)


@pytest.mark.parametrize("key", ["state_dict", "model", "module", "model_state_dict"])
def test_unwraps_training_checkpoints(tmp_path: Path, key: str) -> None:
    state = _model().state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({key: state, "epoch": 3, "lr": 0.1}, path)

    _assert_same_state(read_state_dict(path), state)


def test_pickled_objects_are_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": CodeRunningPayload(marker)}, path)

    with pytest.raises(WeightsUnavailableError, match="cannot read weights file") as caught:
        read_state_dict(path)

    assert not marker.exists()
    assert "\n" not in str(caught.value)
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_a_file_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    mixed = tmp_path / "mixed.pth"
    torch.save({"weight": torch.zeros(3), "note": "hello"}, mixed)

    for bad in (path, mixed):
        with pytest.raises(WeightsUnavailableError, match="does not hold a state dict"):
            read_state_dict(bad)


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.pth"])
def test_corrupt_files_give_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 not weights at all " * 10)

    with pytest.raises(WeightsUnavailableError, match="cannot read weights file") as caught:
        read_state_dict(path)

    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_load_into_reports_missing_and_unexpected_keys_in_one_line() -> None:
    state = _model().state_dict()
    state.pop("0.bias")
    state["extra.weight"] = torch.zeros(1)

    with pytest.raises(WeightsUnavailableError) as caught:
        load_into(_model(), state, Path("w.pth"), "toy:model")

    message = str(caught.value)
    assert "1 missing keys ['0.bias']" in message and "1 unexpected keys ['extra.weight']" in message
    assert "\n" not in message


def test_load_into_reports_wrong_shapes_in_one_line() -> None:
    state = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)).state_dict()

    with pytest.raises(WeightsUnavailableError, match="wrong shape") as caught:
        load_into(_model(), state, Path("w.pth"), "toy:model")

    assert "0.weight (5, 3) vs (4, 3)" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_load_into_strips_a_wrapper_prefix(prefix: str) -> None:
    source, target = _model(), _model()
    wrapped = {prefix + key: value for key, value in source.state_dict().items()}

    load_into(target, wrapped, Path("w.pth"), "toy:model")

    _assert_same_state(target.state_dict(), source.state_dict())


def test_fixed_seed_is_reproducible_and_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    with fixed_seed():
        first = _model().state_dict()
    with fixed_seed():
        second = _model().state_dict()

    _assert_same_state(first, second)
    assert torch.equal(torch.rand(3), expected_next)


def _request(text: str, weights: Path | None = None, pretrained: bool = False) -> LoadRequest:
    return LoadRequest(parse_spec(text), weights, pretrained)


def test_build_model_loads_a_weights_file_over_random_init(tmp_path: Path) -> None:
    source = _model()
    with torch.no_grad():
        source[0].weight.fill_(0.5)
    path = save_state_dict(source.state_dict(), tmp_path / "w.safetensors")

    built = build_model(_request("timm:toy", weights=path, pretrained=True), "nothing", lambda _pretrained: _model())

    _assert_same_state(built.state_dict(), source.state_dict())


def test_build_model_asks_for_pretrained_only_without_a_file() -> None:
    asked: list[bool] = []

    def create(pretrained: bool) -> nn.Module:
        asked.append(pretrained)
        return _model()

    pretrained = build_model(_request("timm:toy", pretrained=True), "nothing", create)
    random_init = build_model(_request("timm:toy", pretrained=False), "nothing", create)

    assert asked == [True, False]
    assert not pretrained.training and not random_init.training  # BatchNorm statistics stay put


def test_hub_failures_become_one_line_with_the_ways_out() -> None:
    def create(_pretrained: bool) -> nn.Module:
        raise OSError("We couldn't connect to 'https://huggingface.co'\nretry later\n")

    with pytest.raises(WeightsUnavailableError) as caught:
        build_model(_request("timm:toy", pretrained=True), "the hub", create)

    message = str(caught.value)
    assert "\n" not in message
    assert "'timm:toy'" in message and "the hub" in message and "couldn't connect" in message
    assert "--weights" in message and "--random-init" in message


def test_options_a_constructor_rejects_are_spec_errors() -> None:
    def create(_pretrained: bool) -> nn.Module:
        raise TypeError("__init__() got an unexpected keyword argument 'depth'")

    with pytest.raises(SpecError, match="unexpected keyword argument 'depth'"):
        build_model(_request("timm:toy?depth=2"), "nothing", create)
    with pytest.raises(WeightsUnavailableError):
        build_model(_request("timm:toy"), "nothing", create)


def test_traitlens_errors_pass_through_unchanged() -> None:
    error = LayerError("already a user error")

    def create(_pretrained: bool) -> nn.Module:
        raise error

    with pytest.raises(LayerError) as caught:
        build_model(_request("timm:toy"), "nothing", create)

    assert caught.value is error


def test_weights_only_loads_overrides_the_callers_choice_and_the_users_opposite_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"payload": CodeRunningPayload(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's environment may say the opposite
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)

    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)

    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_a_port_nobody_listens_on_is_unreachable_and_the_hub_offline_only_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert reachable(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert not reachable(f"http://127.0.0.1:{port}")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with hub_offline_when_unreachable() as offline:
        assert offline and constants.HF_HUB_OFFLINE
    assert constants.HF_HUB_OFFLINE is False
