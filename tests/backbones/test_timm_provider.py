"""``timm:`` specs: ViTs with CLS, registers or neither, and CNNs, checked against timm itself."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from tests.backbones.builders import (
    TINY_DINOV2_REG,
    TINY_SIGLIP,
    TINY_VIT,
    CodeRunningPayload,
    perturbed_state,
    pixels,
    save_state_dict,
)
from traitlens.backbones import Backbone, TokenLayout, load_backbone
from traitlens.errors import SpecError, WeightsUnavailableError

TINY_VIT_1K = "timm:vit_tiny_patch16_224?img_size=32&depth=2"


@pytest.fixture(scope="module")
def dinov2() -> Backbone:
    return load_backbone(TINY_DINOV2_REG, pretrained=False)


@pytest.fixture(scope="module")
def siglip() -> Backbone:
    return load_backbone(TINY_SIGLIP, pretrained=False)


@pytest.fixture(scope="module")
def resnet() -> Backbone:
    return load_backbone("timm:resnet18", pretrained=False)


def _timm_blocks(model: torch.nn.Module, pixels_bchw: torch.Tensor) -> list[torch.Tensor]:
    """timm's own block outputs (no hooks), prefix tokens first, as (b, t, d)."""
    has_prefix = model.num_prefix_tokens > 0  # without any, timm returns bare patch tokens
    with torch.no_grad():
        intermediates = model.forward_intermediates(
            pixels_bchw, norm=False, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=has_prefix
        )
    if not has_prefix:
        return list(intermediates)
    return [torch.cat([prefix, patches], dim=1) for patches, prefix in intermediates]


@pytest.mark.parametrize(
    ("spec", "layout", "width"),
    [
        (TINY_VIT, TokenLayout(n_prefix=1, grid_hw=(2, 2), has_cls=True), 192),
        (TINY_DINOV2_REG, TokenLayout(n_prefix=5, grid_hw=(2, 2), has_cls=True), 32),
        (TINY_SIGLIP, TokenLayout(n_prefix=0, grid_hw=(2, 2), has_cls=False), 32),
    ],
)
def test_vit_layouts_and_spec_options(spec: str, layout: TokenLayout, width: int) -> None:
    backbone = load_backbone(spec, pretrained=False)

    assert backbone.layer_names == ["blocks.0", "blocks.1"]  # depth=2 reached the constructor
    for name in backbone.layer_names:
        assert backbone.layer(name).layout == layout
        assert backbone.layer(name).width == width
    with torch.no_grad(), backbone.capture(backbone.layer_names) as captured:
        backbone.forward(pixels(backbone))
    assert captured["blocks.1"].shape == (2, layout.n_tokens, width)


def test_dinov2_registers_sit_between_cls_and_patches(dinov2: Backbone) -> None:
    layout = dinov2.layer(-1).layout
    x = pixels(dinov2)

    with torch.no_grad():
        reference = _timm_blocks(dinov2.model, x)
        with dinov2.capture(dinov2.layer_names) as captured:
            dinov2.forward(x)

    assert layout.n_registers == 4
    assert dinov2.model.reg_token.shape[1] == 4
    for name, expected in zip(dinov2.layer_names, reference, strict=True):
        assert torch.equal(captured[name], expected)
    # the patch tokens timm returns as a feature map are ours, in row-major order
    with torch.no_grad():
        maps = dinov2.model.forward_intermediates(x, norm=False, output_fmt="NCHW", intermediates_only=True)
    patches_btd = layout.select(captured["blocks.1"], "patch")
    assert torch.equal(patches_btd.reshape(2, 2, 2, 32).permute(0, 3, 1, 2), maps[1])


def test_siglip_has_no_cls_and_every_token_is_a_patch(siglip: Backbone) -> None:
    x = pixels(siglip)
    with torch.no_grad(), siglip.capture([0, 1]) as captured:
        siglip.forward(x)

    assert siglip.model.cls_token is None
    for name, expected in zip(siglip.layer_names, _timm_blocks(siglip.model, x), strict=True):
        assert torch.equal(captured[name], expected)
    assert siglip.layer(0).layout.select(captured["blocks.0"], "patch").shape == (2, 4, 32)


def test_cnn_stages_are_grids_without_prefix(resnet: Backbone) -> None:
    assert resnet.layer_names == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [resnet.layer(name).layout.grid_hw for name in resnet.layer_names] == [
        (112, 112), (56, 56), (28, 28), (14, 14), (7, 7)
    ]
    assert [resnet.layer(name).width for name in resnet.layer_names] == [64, 64, 128, 256, 512]
    assert all(resnet.layer(name).layout.n_prefix == 0 for name in resnet.layer_names)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # a small input of our own
    with torch.no_grad():
        maps = resnet.model.forward_intermediates(x, intermediates_only=True)
        with resnet.capture(resnet.layer_names) as captured:
            resnet.forward(x)
    for name, map_bchw in zip(resnet.layer_names, maps, strict=True):
        assert torch.equal(captured[name], map_bchw.flatten(2).transpose(1, 2))


def test_cnn_tokens_stop_early_and_match_a_full_forward(resnet: Backbone) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), resnet.capture(["layer2"]) as full:
        resnet.forward(x)
    reached: list[str] = []
    handle = resnet.model.layer3.register_forward_hook(lambda *_: reached.append("layer3"))
    try:
        tokens = resnet.tokens(x, ["layer2"])
    finally:
        handle.remove()

    assert torch.equal(tokens["layer2"], full["layer2"])
    assert tokens["layer2"].shape == (1, 64, 128)
    assert reached == []


def test_cnn_edit_of_one_pixel_token_changes_only_that_pixel(resnet: Backbone) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def bump(tokens_btd: torch.Tensor) -> torch.Tensor:
        edited = tokens_btd.clone()
        edited[:, 1 * 8 + 3] += 5.0  # layer2 is 8x8 at 64 px: row 1, column 3
        return edited

    with torch.no_grad():
        with resnet.capture(["layer2"]) as plain:
            resnet.forward(x)
        with resnet.edit("layer2", bump), resnet.capture(["layer2"]) as edited:
            resnet.forward(x)
    plain_map = plain["layer2"].transpose(1, 2).reshape(1, 128, 8, 8)
    edited_map = edited["layer2"].transpose(1, 2).reshape(1, 128, 8, 8)

    changed = (edited_map != plain_map).any(dim=1)[0]
    assert changed.nonzero().tolist() == [[1, 3]]


@pytest.mark.parametrize("spec", [TINY_VIT, "timm:resnet18"])
def test_preprocessing_matches_timms_own_transform(spec: str) -> None:
    backbone = load_backbone(spec, pretrained=False)
    config = timm.data.resolve_model_data_config(backbone.model)
    config["input_size"] = (3, *backbone.preprocess.size_hw)  # the img_size option, as timm's model has it
    image = Image.fromarray(
        torch.randint(0, 256, (61, 83, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy()
    )

    ours = backbone.preprocess.image(image)
    reference = timm.data.create_transform(**config)(image)

    assert ours.shape == reference.shape
    # PIL and tensor resampling differ by rounding only
    assert (ours - reference).abs().mean() < 1e-3
    assert torch.allclose(ours, reference, atol=0.05)


def test_random_init_is_reproducible(dinov2: Backbone) -> None:
    again = load_backbone(TINY_DINOV2_REG, pretrained=False)

    assert again.weights_fingerprint() == dinov2.weights_fingerprint()
    x = pixels(dinov2)
    with torch.no_grad():
        assert torch.equal(again.forward(x), dinov2.forward(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path: Path, dinov2: Backbone, suffix: str) -> None:
    state = perturbed_state(dinov2)
    path = save_state_dict(state, tmp_path / f"dinov2{suffix}")
    source = load_backbone(TINY_DINOV2_REG, pretrained=False)
    source.model.load_state_dict(state)

    loaded = load_backbone(TINY_DINOV2_REG, weights=path)

    x = pixels(dinov2)
    with torch.no_grad():
        assert torch.equal(loaded.forward(x), source.forward(x))
        assert not torch.allclose(loaded.forward(x), dinov2.forward(x))
    assert loaded.weights_fingerprint() == source.weights_fingerprint() != dinov2.weights_fingerprint()


def _save_tiny_vit(tmp_path: Path) -> Path:
    state = load_backbone(TINY_VIT, pretrained=False).model.state_dict()
    return save_state_dict(state, tmp_path / "tiny5.safetensors")


def test_imagenet_class_names_come_with_real_weights_only(tmp_path: Path) -> None:
    random_init = load_backbone(TINY_VIT_1K, pretrained=False)
    path = save_state_dict(random_init.model.state_dict(), tmp_path / "vit.safetensors")

    with_weights = load_backbone(TINY_VIT_1K, weights=path)

    assert random_init.class_names is None
    assert with_weights.class_names is not None and len(with_weights.class_names) == 1000
    assert "tench" in with_weights.class_names[0]
    assert load_backbone(TINY_VIT, weights=_save_tiny_vit(tmp_path)).class_names is None  # 5 classes


@pytest.mark.parametrize(
    ("other_spec", "fragment"),
    [
        ("timm:vit_tiny_patch16_224?img_size=32&depth=3&num_classes=5", "missing keys ['blocks.2."),
        ("timm:vit_tiny_patch16_224?img_size=32&depth=2&num_classes=7", "wrong shape"),
    ],
)
def test_mismatched_weights_are_one_line(tmp_path: Path, other_spec: str, fragment: str) -> None:
    path = _save_tiny_vit(tmp_path)

    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone(other_spec, weights=path)

    message = str(caught.value)
    assert fragment in message and str(path) in message
    assert "\n" not in message


def test_pretrained_without_a_hub_fails_fast_with_the_ways_out() -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("timm:vit_tiny_patch16_224")
    elapsed = time.monotonic() - start

    message = str(caught.value)
    assert "--weights" in message and "--random-init" in message and "vit_tiny_patch16_224" in message
    assert "\n" not in message
    assert elapsed < 10


def test_a_weights_file_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": load_backbone(TINY_VIT, pretrained=False).model.state_dict(), "hook": CodeRunningPayload(marker)}, path)

    with pytest.raises(WeightsUnavailableError, match="cannot read weights file"):
        load_backbone(TINY_VIT, weights=path)

    assert not marker.exists()


def test_an_unreachable_hub_fails_fast_in_one_line_without_retrying(monkeypatch: pytest.MonkeyPatch,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """Not declared offline, but nothing answers: the hub is read from its cache only, at once."""
    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("timm:vit_tiny_patch16_224.augreg_in21k")

    assert time.monotonic() - start < 10
    assert "the hub is offline (HF_HUB_OFFLINE) or cannot be reached" in str(caught.value)
    assert "retry" not in capfd.readouterr().err.lower()
    assert constants.HF_HUB_OFFLINE is False  # switched on for the load only


def test_unknown_model_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="timm has no model 'vit_gigantic_patch3'"):
        load_backbone("timm:vit_gigantic_patch3", pretrained=False)


@pytest.mark.parametrize("name", ["hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", "hf_hub:timm/x", "local-dir:/tmp"])
def test_hub_and_local_dir_names_are_refused(name: str) -> None:
    """timm would read these itself; local weights go through --weights, our own reader."""
    with pytest.raises(SpecError, match="--weights PATH"):
        load_backbone(f"timm:{name}", pretrained=False)


def test_options_the_model_rejects_are_a_spec_error() -> None:
    with pytest.raises(SpecError, match="unexpected keyword argument 'embed_dim'"):
        load_backbone("timm:resnet18?embed_dim=32", pretrained=False)
