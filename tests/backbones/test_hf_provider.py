"""``hf:`` specs: transformers vision models from config directories, checked against
``output_hidden_states`` (``hidden_states[i + 1]`` is the output of block ``i``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from tests.backbones.builders import (
    all_hook_counts,
    hf_config,
    perturbed_state,
    pixels,
    save_state_dict,
    write_hf_config,
)
from traitlens.backbones import Backbone, TokenLayout, load_backbone
from traitlens.backbones.preprocess import CLIP_MEAN, HALF_MEAN, IMAGENET_MEAN
from traitlens.errors import SpecError, WeightsUnavailableError

HfDir = Callable[[str], Path]

KINDS = {
    # kind: (model class, layout, block list name); transformers 5 dropped the ``vision_model``
    # wrapper inside CLIPVisionModel and SiglipVisionModel, and ViT's ``encoder``
    "dinov2": ("Dinov2Model", TokenLayout(1, (2, 2), True), "encoder.layer"),
    "dinov2_registers": ("Dinov2WithRegistersModel", TokenLayout(5, (2, 2), True), "encoder.layer"),
    "clip_vision": ("CLIPVisionModel", TokenLayout(1, (2, 2), True), "encoder.layers"),
    "siglip_vision": ("SiglipVisionModel", TokenLayout(0, (2, 2), False), "encoder.layers"),
    "clip": ("CLIPVisionModel", TokenLayout(1, (2, 2), True), "encoder.layers"),
    "vit_classifier": ("ViTForImageClassification", TokenLayout(1, (2, 2), True), "vit.layers"),
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> HfDir:
    """A config-only directory per model family, written once per module."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            made[kind] = write_hf_config(tmp_path_factory.mktemp(kind), kind)
        return made[kind]

    return make


@pytest.fixture(scope="module")
def backbones(hf_dir: HfDir) -> dict[str, Backbone]:
    return {kind: load_backbone(f"hf:{hf_dir(kind)}", pretrained=False) for kind in KINDS}


def _hidden_states(backbone: Backbone, pixels_bchw: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return backbone.model(pixel_values=pixels_bchw, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("kind", KINDS)
def test_model_class_blocks_and_layout(backbones: dict[str, Backbone], kind: str) -> None:
    class_name, layout, blocks = KINDS[kind]
    backbone = backbones[kind]

    assert type(backbone.model).__name__ == class_name
    assert backbone.layer_names == [f"{blocks}.0", f"{blocks}.1"]
    for name in backbone.layer_names:
        assert backbone.layer(name).layout == layout
        assert backbone.layer(name).width == 32


@pytest.mark.parametrize("kind", KINDS)
def test_capture_equals_hidden_states(backbones: dict[str, Backbone], kind: str) -> None:
    backbone = backbones[kind]
    x = pixels(backbone)
    hidden_states = _hidden_states(backbone, x)

    with torch.no_grad(), backbone.capture(backbone.layer_names) as captured:
        backbone.forward(x)

    assert len(hidden_states) == 3  # embeddings, then one per block
    for index, name in enumerate(backbone.layer_names):
        assert captured[name].shape == (2, KINDS[kind][1].n_tokens, 32)
        assert torch.equal(captured[name], hidden_states[index + 1])


def test_registers_follow_the_cls_token(backbones: dict[str, Backbone]) -> None:
    backbone = backbones["dinov2_registers"]
    x = pixels(backbone)
    with torch.no_grad():
        embeddings = backbone.model.embeddings(x)

    # the embedding layer lays tokens out as [CLS, 4 registers, 4 patches]
    assert embeddings.shape == (2, 9, 32)
    assert torch.equal(embeddings[0, 1:5], backbone.model.embeddings.register_tokens[0])
    assert backbone.layer(0).layout.n_registers == 4


@pytest.mark.parametrize(("kind", "field"), [
    ("dinov2", "pooler_output"), ("clip_vision", "pooler_output"), ("siglip_vision", "pooler_output"),
    ("vit_classifier", "logits"),
])
def test_forward_returns_the_head_output(backbones: dict[str, Backbone], kind: str, field: str) -> None:
    backbone = backbones[kind]
    x = pixels(backbone)
    with torch.no_grad():
        expected = getattr(backbone.model(pixel_values=x), field)
        assert torch.equal(backbone.forward(x), expected)


def test_classifier_class_names_come_from_the_config(backbones: dict[str, Backbone]) -> None:
    assert backbones["vit_classifier"].class_names == ["ant", "bee", "cat"]
    assert backbones["dinov2"].class_names is None


def test_full_clip_config_builds_only_the_vision_tower(backbones: dict[str, Backbone]) -> None:
    model = backbones["clip"].model

    assert isinstance(model.config, transformers.CLIPVisionConfig)
    assert not any("text" in name for name, _ in model.named_parameters())


def test_edits_and_hooks(backbones: dict[str, Backbone]) -> None:
    backbone = backbones["dinov2"]
    x = pixels(backbone)
    # transformers 5 keeps hooks of its own on the blocks once hidden states were asked for
    hooks_before = all_hook_counts(backbone)

    def zero_patches(tokens_btd: torch.Tensor) -> torch.Tensor:
        edited = tokens_btd.clone()
        edited[:, 1:] = 0
        return edited

    with torch.no_grad():
        plain = backbone.forward(x)
        with backbone.edit(0, lambda tokens_btd: tokens_btd.clone()):
            same = backbone.forward(x)
        with backbone.edit(0, zero_patches), backbone.capture([0]) as captured:
            edited = backbone.forward(x)

    assert torch.equal(plain, same)
    assert not torch.allclose(plain, edited)
    assert captured["encoder.layer.0"][:, 1:].abs().sum() == 0
    assert all_hook_counts(backbone) == hooks_before


def test_tokens_stop_early(backbones: dict[str, Backbone]) -> None:
    backbone = backbones["siglip_vision"]
    x = pixels(backbone)
    reached: list[int] = []
    handle = backbone.model.post_layernorm.register_forward_hook(lambda *_: reached.append(1))
    try:
        tokens = backbone.tokens(x, [0])
    finally:
        handle.remove()

    assert reached == []
    assert torch.equal(tokens["encoder.layers.0"], _hidden_states(backbone, x)[1])


def test_random_init_is_reproducible(backbones: dict[str, Backbone], hf_dir: HfDir) -> None:
    again = load_backbone(f"hf:{hf_dir('clip_vision')}", pretrained=False)

    assert again.weights_fingerprint() == backbones["clip_vision"].weights_fingerprint()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path: Path, backbones: dict[str, Backbone], hf_dir: HfDir, suffix: str) -> None:
    original = backbones["dinov2_registers"]
    state = perturbed_state(original)
    path = save_state_dict(state, tmp_path / f"dinov2{suffix}")

    loaded = load_backbone(f"hf:{hf_dir('dinov2_registers')}", weights=path)

    own = loaded.model.state_dict()
    assert all(torch.equal(own[key], state[key]) for key in state)
    x = pixels(original)
    with torch.no_grad():
        assert not torch.allclose(loaded.forward(x), original.forward(x))


def test_save_pretrained_directory_loads_the_vision_tower_of_a_full_clip(tmp_path: Path) -> None:
    clip = transformers.CLIPModel(hf_config("clip")).eval()
    with torch.no_grad():
        for parameter in clip.parameters():
            parameter.add_(0.01)
    clip.save_pretrained(tmp_path)

    backbone = load_backbone(f"hf:{tmp_path}")

    x = pixels(backbone)
    with torch.no_grad():
        expected = clip.vision_model(pixel_values=x).pooler_output
        assert torch.allclose(backbone.forward(x), expected, atol=1e-6)
    assert torch.equal(backbone.model.embeddings.class_embedding, clip.vision_model.embeddings.class_embedding)


def test_pretrained_from_a_config_only_directory_is_one_line(hf_dir: HfDir) -> None:
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone(f"hf:{hf_dir('dinov2')}")

    message = str(caught.value)
    assert "--weights" in message and "--random-init" in message and "\n" not in message


def test_a_hub_repo_without_a_hub_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="facebook/dinov2-small"):
        load_backbone("hf:facebook/dinov2-small")
    with pytest.raises(WeightsUnavailableError):
        load_backbone("hf:facebook/dinov2-small", pretrained=False)  # even the config is on the hub
    assert time.monotonic() - start < 10


def test_options_update_the_built_config(hf_dir: HfDir) -> None:
    dinov2 = load_backbone(f"hf:{hf_dir('dinov2')}?image_size=56", pretrained=False)
    clip = load_backbone(f"hf:{hf_dir('clip')}?image_size=64&num_hidden_layers=3", pretrained=False)

    assert dinov2.preprocess.size_hw == (56, 56) and dinov2.layer(0).layout.grid_hw == (4, 4)
    # a full CLIP config: the options reach its vision config, the one that is built
    assert clip.layer(0).layout.grid_hw == (4, 4) and len(clip.layer_names) == 3


def test_unknown_options_are_spec_errors(hf_dir: HfDir) -> None:
    with pytest.raises(SpecError, match="image_sizee"):
        load_backbone(f"hf:{hf_dir('dinov2')}?image_sizee=56", pretrained=False)


@pytest.mark.parametrize(("kind", "expected"), [
    ("dinov2", ((28, 28), 32, IMAGENET_MEAN, "shortest")),
    ("clip_vision", ((32, 32), 32, CLIP_MEAN, "shortest")),
    ("clip", ((32, 32), 32, CLIP_MEAN, "shortest")),
    ("siglip_vision", ((32, 32), 32, HALF_MEAN, "squash")),
])
def test_family_preprocessing_without_an_image_processor(
    backbones: dict[str, Backbone], kind: str, expected: tuple[object, ...]
) -> None:
    preprocess = backbones[kind].preprocess

    assert (preprocess.size_hw, preprocess.resize, preprocess.mean, preprocess.resize_mode) == expected


def _random_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 83, 3), dtype=np.uint8))


@pytest.mark.parametrize(("kind", "processor"), [
    ("clip", transformers.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})),
    ("siglip_vision", transformers.SiglipImageProcessor(size={"height": 32, "width": 32})),
    # a non-square crop: the patch grid must be 2 x 3, not 1 x 6
    ("dinov2", transformers.BitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 28, "width": 42}, image_mean=[0.1, 0.2, 0.3],
        image_std=[0.5, 0.5, 0.5],
    )),
])
def test_a_saved_image_processor_is_followed(tmp_path: Path, kind: str, processor: Any) -> None:
    directory = write_hf_config(tmp_path, kind)
    processor.save_pretrained(directory)

    backbone = load_backbone(f"hf:{directory}", pretrained=False)

    image = _random_image()
    reference = processor(images=image, return_tensors="pt").pixel_values[0]
    ours = backbone.preprocess.image(image)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-4)
    grid_hw = (ours.shape[1] // 16, ours.shape[2] // 16) if kind != "dinov2" else (2, 3)
    assert backbone.layer(0).layout.grid_hw == grid_hw
    with torch.no_grad(), backbone.capture([0]) as captured:
        backbone.forward(ours[None])
    assert captured[backbone.layer_names[0]].shape[1] == backbone.layer(0).layout.n_tokens


def test_half_precision_checkpoints_and_configs_compute_in_float32(tmp_path: Path) -> None:
    half = transformers.Dinov2Model(hf_config("dinov2")).to(torch.float16).eval()
    half.save_pretrained(tmp_path)  # config.json now names float16

    pretrained = load_backbone(f"hf:{tmp_path}")
    random_init = load_backbone(f"hf:{tmp_path}", pretrained=False)

    for backbone in (pretrained, random_init):
        assert {parameter.dtype for parameter in backbone.model.parameters()} == {torch.float32}
    x = pixels(pretrained)
    with torch.no_grad():
        reference = half.float()(pixel_values=x).pooler_output
        assert torch.equal(pretrained.forward(x), reference)
