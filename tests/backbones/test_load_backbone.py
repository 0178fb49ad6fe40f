"""``load_backbone``: one call from a spec string to a Backbone, through the provider registry."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from tests.backbones.builders import CodeRunningPayload
from traitlens.backbones import Backbone, LoadRequest, ModelSpec, load_backbone
from traitlens.backbones.spec import COUNT, PROVIDERS, Provider, register_provider
from traitlens.errors import SpecError


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[LoadRequest]:
    """Registers a ``toy`` provider that records its requests, for this test only."""
    requests: list[LoadRequest] = []
    monkeypatch.setitem(PROVIDERS, "toy", Provider(requests.append, {"depth": COUNT}))
    return requests


def test_requests_reach_the_provider_named_by_the_prefix(seen: list[LoadRequest], tmp_path: Path) -> None:
    load_backbone("toy:model-a?depth=2", weights=str(tmp_path / "w.safetensors"), pretrained=True)
    load_backbone("toy:model-b", pretrained=False)

    assert seen == [
        LoadRequest(ModelSpec("toy", "model-a", {"depth": 2}, "toy:model-a?depth=2"), tmp_path / "w.safetensors", True),
        LoadRequest(ModelSpec("toy", "model-b", {}, "toy:model-b"), None, False),
    ]
    assert isinstance(seen[0].weights, Path)


def test_register_provider_adds_a_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("traitlens.backbones.spec.PROVIDERS", PROVIDERS.copy())
    from traitlens.backbones import spec as spec_module

    @register_provider("plugin", {"depth": COUNT})
    def load_plugin(request: LoadRequest) -> str:
        return f"built {request.spec.name}"

    assert spec_module.PROVIDERS["plugin"] == Provider(load_plugin, {"depth": COUNT})
    assert "plugin" not in PROVIDERS


def test_unknown_provider_is_a_spec_error_before_anything_loads(seen: list[LoadRequest]) -> None:
    with pytest.raises(SpecError, match="unknown model provider 'tim'"):
        load_backbone("tim:vit_tiny_patch16_224")
    assert seen == []


def test_an_option_the_provider_does_not_declare_never_reaches_it(seen: list[LoadRequest]) -> None:
    with pytest.raises(SpecError, match=r"toy models take no option 'weights_only' \(allowed: depth\)"):
        load_backbone("toy:model?depth=2&weights_only=false")
    assert seen == []


def test_no_file_is_unpickled_while_a_provider_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whatever a library passes to ``torch.load`` while it builds a model, the file is read as
    tensors only: a pickle that would run code is refused and runs nothing."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": CodeRunningPayload(marker)}, evil)

    def load_like_a_library(_request: LoadRequest) -> object:
        return torch.load(evil, weights_only=False)  # as torchvision's download cache reader does

    monkeypatch.setitem(PROVIDERS, "unsafe", Provider(load_like_a_library, {}))
    with pytest.raises(pickle.UnpicklingError):
        load_backbone("unsafe:model")
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # outside a load the caller's choice holds again
    assert marker.exists()


def test_the_backbone_keeps_its_spec_text() -> None:
    for spec in ("timm:resnet18?num_classes=3", "torchvision:mobilenet_v2?num_classes=3"):
        backbone = load_backbone(spec, pretrained=False)
        assert isinstance(backbone, Backbone)
        assert backbone.spec == spec


def test_the_traitlens_models_load_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import traitlens.backbones.spec as spec

    monkeypatch.setattr(spec, "entry_points", lambda group: [])
    spec._load_plugins.cache_clear()
    monkeypatch.setattr(spec, "PROVIDERS", {name: value for name, value in spec.PROVIDERS.items() if name != "traitlens"})
    monkeypatch.delitem(sys.modules, "traitlens.specimens.provider")
    assert "traitlens" in spec.registered_providers()
    spec._load_plugins.cache_clear()
