"""``load_backbone``: one call from a spec string to a Backbone, through the provider registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlens.backbones import Backbone, LoadRequest, ModelSpec, load_backbone
from traitlens.backbones.spec import PROVIDERS, register_provider
from traitlens.errors import SpecError


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[LoadRequest]:
    """Registers a ``toy`` provider that records its requests, for this test only."""
    requests: list[LoadRequest] = []
    monkeypatch.setitem(PROVIDERS, "toy", requests.append)
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

    @register_provider("plugin")
    def load_plugin(request: LoadRequest) -> str:
        return f"built {request.spec.name}"

    assert spec_module.PROVIDERS["plugin"] is load_plugin
    assert "plugin" not in PROVIDERS


def test_unknown_provider_is_a_spec_error_before_anything_loads(seen: list[LoadRequest]) -> None:
    with pytest.raises(SpecError, match="unknown model provider 'tim'"):
        load_backbone("tim:vit_tiny_patch16_224")
    assert seen == []


def test_the_backbone_keeps_its_spec_text() -> None:
    for spec in ("timm:resnet18?num_classes=3", "torchvision:mobilenet_v2?num_classes=3"):
        backbone = load_backbone(spec, pretrained=False)
        assert isinstance(backbone, Backbone)
        assert backbone.spec == spec
