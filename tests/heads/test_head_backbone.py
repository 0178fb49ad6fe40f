"""A probe as a backbone's head: the same logits as on stored tokens, gradients to pixels, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.backbones.builders import all_hook_counts, perturbed_state
from traitlens.backbones import Backbone, load_backbone
from traitlens.errors import LayerError
from traitlens.heads import HeadError, ProbeConfig, load_head, load_head_backbone, train_probe
from traitlens.heads.probe import pooled_store_features
from traitlens.store import ActivationStore

from .conftest import HEAD_MODEL


@pytest.fixture(scope="module")
def probes(colour_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probes")
    train_probe(ProbeConfig(acts=colour_store, out=root / "cls1", layer="blocks.1", pooling="cls"))
    train_probe(ProbeConfig(acts=colour_store, out=root / "mean0", layer="blocks.0", pooling="mean"))
    return root


def _store_pixels(store: ActivationStore, backbone: Backbone) -> torch.Tensor:
    images = [Image.open(Path(store.manifest["dataset"]["path"]) / image.source) for image in store.images]
    return torch.stack([backbone.preprocess.image(image) for image in images])


@pytest.mark.parametrize(("probe", "layer", "pooling"), [("cls1", "blocks.1", "cls"), ("mean0", "blocks.0", "mean")])
def test_logits_on_images_equal_the_probe_on_stored_tokens(colour_store: Path, probes: Path, head_model: Backbone,
                                                           probe: str, layer: str, pooling: str) -> None:
    with_head = load_head_backbone(head_model, probes / probe)
    store = ActivationStore(colour_store)
    with torch.no_grad():
        live_bc = with_head.forward(_store_pixels(store, head_model))
    stored_bc = load_head(probes / probe).logits(pooled_store_features(store, store.layer(layer), pooling))  # type: ignore[arg-type]
    assert live_bc.shape == (36, 3) and with_head.class_names == ["blue", "green", "red"]
    assert torch.allclose(live_bc, stored_bc, atol=2e-3 * float(stored_bc.abs().max()), rtol=0)  # float16 store
    assert torch.equal(live_bc.argmax(-1), stored_bc.argmax(-1))
    assert all_hook_counts(head_model) == 0


def test_gradients_reach_pixels_and_later_layers_never_run(probes: Path, head_model: Backbone) -> None:
    with_head = load_head_backbone(head_model, probes / "mean0")
    assert with_head.layer_names == ["blocks.0"] and with_head.weights_fingerprint() == head_model.weights_fingerprint()
    later_calls: list[int] = []
    handle = head_model.layer("blocks.1").module.register_forward_hook(lambda *_: later_calls.append(1))
    pixels_bchw = torch.randn(2, 3, 32, 32, requires_grad=True)
    try:
        with with_head.capture("blocks.0", detach=False) as captured:
            logits_bc = with_head.forward(pixels_bchw)
    finally:
        handle.remove()
    logits_bc[:, 1].sum().backward()
    assert later_calls == [] and captured["blocks.0"].requires_grad
    assert pixels_bchw.grad is not None and pixels_bchw.grad.abs().sum() > 0


def test_edits_of_the_probe_layer_reach_the_logits(probes: Path, head_model: Backbone) -> None:
    with_head = load_head_backbone(head_model, probes / "cls1")
    head = load_head(probes / "cls1")
    with torch.no_grad(), with_head.edit("blocks.1", torch.zeros_like):
        logits_bc = with_head.forward(torch.randn(2, 3, 32, 32))
    assert torch.allclose(logits_bc, head.bias_c.expand(2, -1))  # zero features leave the bias


def test_a_head_for_other_weights_or_widths_is_refused(probes: Path) -> None:
    other = load_backbone(HEAD_MODEL, pretrained=False)
    other.model.load_state_dict(perturbed_state(other))
    with pytest.raises(HeadError, match="was trained on activations of .* not those of") as caught:
        load_head_backbone(other, probes / "cls1")
    assert "\n" not in str(caught.value)

    wider = load_backbone(HEAD_MODEL.replace("embed_dim=32", "embed_dim=48"), pretrained=False)
    with pytest.raises(HeadError, match="reads width 32 at blocks.1; that layer of .* has width 48"):
        load_head_backbone(wider, probes / "cls1")
    shallower = load_backbone(HEAD_MODEL.replace("depth=2", "depth=1"), pretrained=False)
    with pytest.raises(LayerError, match="unknown layer 'blocks.1'"):
        load_head_backbone(shallower, probes / "cls1")
    no_cls = load_backbone(HEAD_MODEL + "&class_token=False&global_pool=avg", pretrained=False)
    with pytest.raises(HeadError, match="has no CLS token"):
        load_head_backbone(no_cls, probes / "cls1")
    with pytest.raises(HeadError, match="head.json missing"):
        load_head_backbone(other, probes)
