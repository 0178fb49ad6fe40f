"""The Backbone interface: layer lookup, capture, edit and early-stopping token extraction.

Checked on a real timm ViT (random weights, 2 blocks, 32 px) against timm's own
``forward_intermediates``, which computes block outputs without any hooks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.backbones.builders import TINY_VIT, ForwardRecorder, all_hook_counts, pixels
from traitlens.backbones import Backbone, load_backbone
from traitlens.errors import LayerError


@pytest.fixture(scope="module")
def vit() -> Backbone:
    return load_backbone(TINY_VIT, pretrained=False)


def _reference_blocks(backbone: Backbone, pixels_bchw: torch.Tensor) -> list[torch.Tensor]:
    """Block outputs as (b, t, d) from timm, prefix tokens first."""
    with torch.no_grad():
        intermediates = backbone.model.forward_intermediates(
            pixels_bchw, norm=False, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
    return [torch.cat([prefix, patches], dim=1) for patches, prefix in intermediates]


def test_layer_lookup_by_name_index_and_negative_index(vit: Backbone) -> None:
    assert vit.layer_names == ["blocks.0", "blocks.1"]
    assert vit.resolve_layer(0) == vit.resolve_layer("0") == vit.resolve_layer("blocks.0") == "blocks.0"
    assert vit.resolve_layer(-1) == vit.resolve_layer("-1") == vit.resolve_layer(" 1 ") == "blocks.1"
    assert vit.resolve_layer(-2) == "blocks.0"
    assert vit.layer(-1).module is vit.model.blocks[1]


@pytest.mark.parametrize("key", [2, -3, "blocks.7", "head", "1.5", ""])
def test_unknown_layers_list_the_valid_ones(vit: Backbone, key: Any) -> None:
    with pytest.raises(LayerError) as caught:
        vit.resolve_layer(key)

    message = str(caught.value)
    assert "-2..1" in message and "blocks.0, blocks.1" in message and TINY_VIT in message
    assert "\n" not in message


def test_resolve_layers_dedupes_and_sorts_into_forward_order(vit: Backbone) -> None:
    assert vit.resolve_layers([-1, "blocks.0", 1, 0]) == ["blocks.0", "blocks.1"]


def test_capture_equals_the_true_block_outputs(vit: Backbone) -> None:
    x = pixels(vit)
    reference = _reference_blocks(vit, x)

    with torch.no_grad(), vit.capture([1, "blocks.0"]) as captured:
        vit.forward(x)

    assert list(captured) == ["blocks.0", "blocks.1"]
    for name, expected in zip(vit.layer_names, reference, strict=True):
        assert captured[name].shape == (2, 5, 192)
        assert torch.equal(captured[name], expected)


def test_capture_accepts_a_single_layer(vit: Backbone) -> None:
    with torch.no_grad(), vit.capture("blocks.1") as captured:
        vit.forward(pixels(vit))

    assert list(captured) == ["blocks.1"]


def test_capture_detaches_unless_asked_not_to(vit: Backbone) -> None:
    x = pixels(vit)
    with vit.capture([0]) as detached:
        vit.forward(x)
    with vit.capture([0], detach=False) as attached:
        logits = vit.forward(x)

    assert not detached["blocks.0"].requires_grad
    assert attached["blocks.0"].requires_grad
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), attached["blocks.0"])
    assert grad.shape == (2, 5, 192) and grad.abs().sum() > 0


def test_hooks_are_removed_after_the_block_and_after_an_error(vit: Backbone) -> None:
    before = all_hook_counts(vit)
    with vit.capture(vit.layer_names):
        assert all_hook_counts(vit) == before + 2
    assert all_hook_counts(vit) == before

    with pytest.raises(RuntimeError, match="boom"), vit.capture(vit.layer_names), vit.edit(0, lambda t: t):
        assert all_hook_counts(vit) == before + 3
        raise RuntimeError("boom")
    assert all_hook_counts(vit) == before
    assert not vit.model.blocks[0]._forward_hooks and not vit.model.blocks[1]._forward_hooks


def test_identity_edit_is_bit_identical(vit: Backbone) -> None:
    x = pixels(vit)
    with torch.no_grad():
        plain = vit.forward(x)
        with vit.edit("blocks.0", lambda tokens_btd: tokens_btd.clone()):
            edited = vit.forward(x)

    assert torch.equal(plain, edited)


def test_editing_patch_tokens_of_the_first_block_changes_the_output(vit: Backbone) -> None:
    x = pixels(vit)
    n_prefix = vit.layer(0).layout.n_prefix

    def zero_patches(tokens_btd: torch.Tensor) -> torch.Tensor:
        edited = tokens_btd.clone()
        edited[:, n_prefix:] = 0
        return edited

    with torch.no_grad():
        plain = vit.forward(x)
        with vit.capture([0]) as before, vit.edit(0, zero_patches), vit.capture([0, 1]) as after:
            edited = vit.forward(x)

    assert not torch.allclose(plain, edited)
    # the capture opened inside the edit sees the edit; the one opened before it does not
    assert torch.equal(after["blocks.0"][:, :n_prefix], before["blocks.0"][:, :n_prefix])
    assert after["blocks.0"][:, n_prefix:].abs().sum() == 0
    assert before["blocks.0"][:, n_prefix:].abs().sum() > 0


def test_editing_the_last_cls_leaves_that_layers_patch_tokens_alone(vit: Backbone) -> None:
    x = pixels(vit)

    def shift_cls(tokens_btd: torch.Tensor) -> torch.Tensor:
        edited = tokens_btd.clone()
        edited[:, 0] += 10.0
        return edited

    with torch.no_grad():
        with vit.capture([-1]) as plain:
            plain_logits = vit.forward(x)
        with vit.edit(-1, shift_cls), vit.capture([-1]) as edited:
            edited_logits = vit.forward(x)

    assert torch.equal(edited["blocks.1"][:, 1:], plain["blocks.1"][:, 1:])
    assert torch.allclose(edited["blocks.1"][:, 0], plain["blocks.1"][:, 0] + 10.0)
    assert not torch.allclose(edited_logits, plain_logits)  # timm's ViT classifies from the CLS token


def test_the_next_block_receives_the_edited_tokens(vit: Backbone) -> None:
    x = pixels(vit)
    block1_inputs: list[torch.Tensor] = []
    handle = vit.model.blocks[1].register_forward_pre_hook(lambda _m, args: block1_inputs.append(args[0]))
    try:
        with torch.no_grad(), vit.edit(0, lambda tokens_btd: tokens_btd * 2.0):
            vit.forward(x)
    finally:
        handle.remove()

    assert torch.equal(block1_inputs[0], _reference_blocks(vit, x)[0] * 2.0)


def test_tokens_stop_after_the_last_requested_layer(vit: Backbone) -> None:
    x = pixels(vit)
    reference = _reference_blocks(vit, x)

    with ForwardRecorder(vit.model.blocks[1]) as later_block, ForwardRecorder(vit.model.head) as head:
        tokens = vit.tokens(x, [0])

    assert list(tokens) == ["blocks.0"]
    assert torch.equal(tokens["blocks.0"], reference[0])
    assert later_block.outputs == [] and head.outputs == []
    assert all_hook_counts(vit) == 0


def test_tokens_at_every_layer_equal_a_full_forward(vit: Backbone) -> None:
    x = pixels(vit)
    with torch.no_grad(), vit.capture(vit.layer_names) as full:
        vit.forward(x)

    tokens = vit.tokens(x, ["blocks.1", 0])

    assert list(tokens) == vit.layer_names
    for name in vit.layer_names:
        assert torch.equal(tokens[name], full[name])


def test_tokens_of_no_layers_is_a_layer_error(vit: Backbone) -> None:
    with pytest.raises(LayerError, match="no layers"):
        vit.tokens(pixels(vit), [])


def test_fingerprint_is_stable_and_tracks_weights(vit: Backbone) -> None:
    again = load_backbone(TINY_VIT, pretrained=False)
    assert again.weights_fingerprint() == vit.weights_fingerprint()
    assert len(vit.weights_fingerprint()) == 64

    changed = load_backbone(TINY_VIT, pretrained=False)
    with torch.no_grad():
        changed.model.head.bias[0] += 1e-3
    assert changed.weights_fingerprint() != vit.weights_fingerprint()


def test_describe_is_json_and_names_every_layer(vit: Backbone) -> None:
    described = json.loads(json.dumps(vit.describe()))

    assert described["spec"] == TINY_VIT
    assert described["weights_fingerprint"] == vit.weights_fingerprint()
    assert described["preprocess"]["size_hw"] == [32, 32]
    assert described["layers"]["blocks.1"] == {
        "width": 192, "layout": {"n_prefix": 1, "grid_hw": [2, 2], "has_cls": True}
    }


def test_a_backbone_needs_layers(vit: Backbone) -> None:
    with pytest.raises(LayerError, match="no layer"):
        Backbone("toy:empty", vit.model, [], vit.preprocess, vit.forward)


def test_to_moves_the_model_and_returns_the_backbone(vit: Backbone) -> None:
    assert vit.to("cpu") is vit
    assert vit.device == torch.device("cpu")
    assert not vit.model.training


def test_an_edit_must_keep_the_token_shape(vit: Backbone) -> None:
    hooks_before = all_hook_counts(vit)
    with pytest.raises(LayerError, match=r"shape \(2, 5, 192\), got \(2, 4, 192\)"), vit.edit(
        0, lambda tokens_btd: tokens_btd[:, 1:]
    ):
        vit.forward(pixels(vit))

    assert all_hook_counts(vit) == hooks_before


def test_gradients_reach_captured_feature_map_tokens() -> None:
    """A CNN's tokens are a rearranged feature map: the rest of the model must read the captured
    tokens themselves, so their gradient is the layer's gradient and not zero."""
    cnn = load_backbone("torchvision:resnet18", pretrained=False)
    layer = cnn.layer("layer3")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    feature_maps: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        feature_maps.append(output)

    handle = layer.module.register_forward_hook(keep)
    try:
        cnn.forward(pixels)[:, 3].sum().backward()
    finally:
        handle.remove()
    expected_bchw = feature_maps[0].grad
    assert expected_bchw is not None and expected_bchw.abs().sum() > 0
    with cnn.capture("layer3", detach=False) as captured:
        logits = cnn.forward(pixels)
    (gradient_btd,) = torch.autograd.grad(logits[:, 3].sum(), captured["layer3"])
    assert torch.allclose(gradient_btd, layer.codec.to_tokens(expected_bchw), atol=1e-6)
