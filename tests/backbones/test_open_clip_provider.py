"""``open_clip:`` specs: the whole CLIP model (text tower included), its image tower as token layers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import open_clip
import pytest
import torch

from tests.backbones.builders import (
    all_hook_counts,
    compact_json,
    perturbed_state,
    pixels,
    save_state_dict,
    tiny_open_clip_spec,
)
from traitlens.backbones import Backbone, TokenLayout, load_backbone
from traitlens.errors import SpecError, WeightsUnavailableError

VIT_B_16 = "open_clip:ViT-B-16?force_image_size=32"
SIGLIP_B_16 = "open_clip:ViT-B-16-SigLIP?force_image_size=32"
TINY = tiny_open_clip_spec()


@pytest.fixture(scope="module")
def vit_b_16() -> Backbone:
    return load_backbone(VIT_B_16, pretrained=False)


@pytest.fixture(scope="module")
def siglip_b_16() -> Backbone:
    return load_backbone(SIGLIP_B_16, pretrained=False)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone(TINY, pretrained=False)


def _open_clip_blocks(visual: torch.nn.Module, pixels_bchw: torch.Tensor) -> list[torch.Tensor]:
    """open_clip's own block outputs (no hooks), prefix tokens first, as (b, t, d)."""
    with torch.no_grad():
        out = visual.forward_intermediates(
            pixels_bchw, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
    prefixes = out.get("image_intermediates_prefix") or [None] * len(out["image_intermediates"])
    return [
        patches if prefix is None else torch.cat([prefix, patches], dim=1)
        for patches, prefix in zip(out["image_intermediates"], prefixes, strict=True)
    ]


def test_vit_b_16_blocks_layout_and_text_tower(vit_b_16: Backbone) -> None:
    assert vit_b_16.layer_names == [f"visual.transformer.resblocks.{i}" for i in range(12)]
    assert vit_b_16.layer(-1).layout == TokenLayout(n_prefix=1, grid_hw=(2, 2), has_cls=True)
    assert vit_b_16.layer(-1).width == 768
    assert vit_b_16.preprocess.size_hw == (32, 32)

    text_bd = vit_b_16.model.encode_text(open_clip.get_tokenizer("ViT-B-16")(["a photo of a cat"]))
    x = pixels(vit_b_16)
    with torch.no_grad():
        image_bd = vit_b_16.forward(x)
        assert torch.equal(image_bd, vit_b_16.model.encode_image(x))
    assert text_bd.shape == (1, 512) and image_bd.shape == (2, 512)


def test_vit_b_16_capture_equals_open_clips_intermediates(vit_b_16: Backbone) -> None:
    x = pixels(vit_b_16)
    reference = _open_clip_blocks(vit_b_16.model.visual, x)

    with torch.no_grad(), vit_b_16.capture([0, 5, -1]) as captured:
        vit_b_16.forward(x)

    for index in (0, 5, 11):
        name = vit_b_16.layer_names[index]
        assert captured[name].shape == (2, 5, 768)
        assert torch.allclose(captured[name], reference[index], atol=1e-5, rtol=0)


def test_vit_b_16_early_stop_and_cls_edit(vit_b_16: Backbone) -> None:
    x = pixels(vit_b_16)
    ln_post_calls: list[int] = []
    handle = vit_b_16.model.visual.ln_post.register_forward_hook(lambda *_: ln_post_calls.append(1))
    try:
        tokens = vit_b_16.tokens(x, [1])
    finally:
        handle.remove()
    assert ln_post_calls == []
    assert torch.allclose(tokens["visual.transformer.resblocks.1"], _open_clip_blocks(vit_b_16.model.visual, x)[1], atol=1e-5)

    def shift_cls(tokens_btd: torch.Tensor) -> torch.Tensor:
        edited = tokens_btd.clone()
        edited[:, 0] += 3.0
        return edited

    with torch.no_grad():
        with vit_b_16.capture([-1]) as plain:
            plain_bd = vit_b_16.forward(x)
        with vit_b_16.edit(-1, shift_cls), vit_b_16.capture([-1]) as edited:
            edited_bd = vit_b_16.forward(x)
    name = vit_b_16.layer_names[-1]
    assert torch.equal(edited[name][:, 1:], plain[name][:, 1:])
    assert not torch.allclose(edited_bd, plain_bd)  # the embedding is pooled from the CLS token
    assert all_hook_counts(vit_b_16) == 0


def test_siglip_timm_tower_has_no_cls(siglip_b_16: Backbone) -> None:
    assert siglip_b_16.layer_names == [f"visual.trunk.blocks.{i}" for i in range(12)]
    assert siglip_b_16.layer(0).layout == TokenLayout(n_prefix=0, grid_hw=(2, 2), has_cls=False)
    assert hasattr(siglip_b_16.model, "encode_text")
    x = pixels(siglip_b_16)
    reference = _open_clip_blocks(siglip_b_16.model.visual, x)

    with torch.no_grad(), siglip_b_16.capture([0, -1]) as captured:
        image_bd = siglip_b_16.forward(x)

    assert torch.allclose(captured["visual.trunk.blocks.0"], reference[0], atol=1e-5, rtol=0)
    assert torch.allclose(captured["visual.trunk.blocks.11"], reference[11], atol=1e-5, rtol=0)
    assert image_bd.shape == (2, 768)


def test_options_reach_the_model_config(tiny: Backbone) -> None:
    assert tiny.layer_names == ["visual.transformer.resblocks.0", "visual.transformer.resblocks.1"]
    assert tiny.layer(0).width == 64
    with torch.no_grad():
        assert tiny.forward(pixels(tiny)).shape == (2, 16)


def test_random_init_is_reproducible(tiny: Backbone) -> None:
    assert load_backbone(TINY, pretrained=False).weights_fingerprint() == tiny.weights_fingerprint()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path: Path, tiny: Backbone, suffix: str) -> None:
    state = perturbed_state(tiny)
    path = save_state_dict(state, tmp_path / f"clip{suffix}")

    loaded = load_backbone(TINY, weights=path)

    x = pixels(tiny)
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))  # the tiny vocabulary
    with torch.no_grad():
        source = load_backbone(TINY, pretrained=False)
        source.model.load_state_dict(state)
        assert torch.equal(loaded.forward(x), source.forward(x))
        assert not torch.allclose(loaded.forward(x), tiny.forward(x))
        assert torch.equal(loaded.model.encode_text(tokens), source.model.encode_text(tokens))


def test_a_weights_file_for_a_tag_gets_the_tags_preprocessing(tmp_path: Path) -> None:
    # A SigLIP tag trained with mean = std = 0.5 and squashed resizing; open_clip applies that only
    # when it downloads the weights itself. The tower is shrunk to a timm ViT-Tiny for speed.
    vision = {"image_size": 32, "timm_model_name": "vit_tiny_patch16_224", "timm_pool": "map", "timm_proj": "none"}
    text = {"context_length": 8, "vocab_size": 100, "width": 192, "heads": 2, "layers": 1}
    spec = (f"open_clip:ViT-B-16-SigLIP/webli?force_image_size=32&embed_dim=192"
            f"&vision_cfg={compact_json(vision)}&text_cfg={compact_json(text)}")
    random_init = load_backbone(spec, pretrained=False)
    path = save_state_dict(random_init.model.state_dict(), tmp_path / "siglip.safetensors")

    loaded = load_backbone(spec, weights=path)

    tag = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    for backbone in (random_init, loaded):
        assert backbone.preprocess.mean == tag["mean"] == (0.5, 0.5, 0.5)
        assert backbone.preprocess.std == tag["std"]
        assert backbone.preprocess.resize_mode == "squash"
        assert backbone.preprocess.size_hw == (32, 32)
    assert load_backbone(TINY, pretrained=False).preprocess.mean != (0.5, 0.5, 0.5)


def _write_local_dir(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    preprocess_cfg = {"mean": [0.25, 0.5, 0.75], "std": [0.2, 0.3, 0.4], "interpolation": "bilinear"}
    directory.mkdir()
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    save_state_dict(state, directory / "open_clip_model.safetensors")
    return directory


def test_local_dir_loads_its_weights_and_preprocessing(tmp_path: Path, tiny: Backbone) -> None:
    state = perturbed_state(tiny)
    directory = _write_local_dir(tmp_path / "bioclip-like", state)

    pretrained = load_backbone(f"open_clip:local-dir:{directory}")
    random_init = load_backbone(f"open_clip:local-dir:{directory}", pretrained=False)

    loaded = pretrained.model.state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    assert pretrained.preprocess.mean == (0.25, 0.5, 0.75) and pretrained.preprocess.interpolation == "bilinear"
    # random init means random, even though the folder has weights
    assert random_init.weights_fingerprint() == tiny.weights_fingerprint() != pretrained.weights_fingerprint()


def test_pretrained_needs_a_tag() -> None:
    with pytest.raises(SpecError, match="ARCH/PRETRAINED"):
        load_backbone("open_clip:ViT-B-16")


def test_unknown_architecture_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="open_clip has no architecture 'ViT-Q-99'"):
        load_backbone("open_clip:ViT-Q-99", pretrained=False)


def test_pretrained_tag_without_a_hub_fails_fast_with_the_ways_out() -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("open_clip:ViT-B-16/openai?force_image_size=32")

    message = str(caught.value)
    assert "--weights" in message and "--random-init" in message and "'openai'" in message
    assert "\n" not in message
    assert time.monotonic() - start < 10
