"""``torchvision:`` specs: CNN classifiers as grids of pixel tokens, and one real checkpoint."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skimage_data

from tests.backbones.builders import all_hook_counts
from tests.pretrained import mobilenet_checkpoint
from traitlens.backbones import Backbone, load_backbone
from traitlens.errors import SpecError, WeightsUnavailableError

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat



@pytest.fixture(scope="module")
def mobilenet() -> Backbone:
    return load_backbone("torchvision:mobilenet_v2", pretrained=False)


@pytest.fixture(scope="module")
def resnet() -> Backbone:
    return load_backbone("torchvision:resnet18", pretrained=False)


def _small_pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_mobilenet_layers_are_the_feature_stages(mobilenet: Backbone) -> None:
    assert mobilenet.layer_names == [f"features.{i}" for i in range(19)]
    last = mobilenet.layer(-1)
    assert last.width == 1280 and last.layout.grid_hw == (7, 7) and last.layout.n_prefix == 0
    assert mobilenet.layer("features.0").layout.grid_hw == (112, 112)
    assert mobilenet.preprocess.size_hw == (224, 224)


def test_mobilenet_capture_equals_the_feature_extractor(mobilenet: Backbone) -> None:
    x = _small_pixels()
    with torch.no_grad():
        features_bchw = mobilenet.model.features(x)
        with mobilenet.capture([-1, 4]) as captured:
            mobilenet.forward(x)
        stage4_bchw = mobilenet.model.features[:5](x)

    assert torch.equal(captured["features.18"], features_bchw.flatten(2).transpose(1, 2))
    assert torch.equal(captured["features.4"], stage4_bchw.flatten(2).transpose(1, 2))
    assert all_hook_counts(mobilenet) == 0


def test_resnet_layers_are_top_level_children_before_the_head(resnet: Backbone) -> None:
    assert resnet.layer_names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert resnet.layer("layer4").layout.grid_hw == (7, 7) and resnet.layer("layer4").width == 512


def test_resnet_capture_equals_a_manual_forward(resnet: Backbone) -> None:
    model = resnet.model
    x = _small_pixels(1)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        layer3 = model.layer3(model.layer2(model.layer1(stem)))
        tokens = resnet.tokens(x, ["layer3", "maxpool"])

    assert torch.equal(tokens["maxpool"], stem.flatten(2).transpose(1, 2))
    assert torch.equal(tokens["layer3"], layer3.flatten(2).transpose(1, 2))


def test_identity_edit_is_bit_identical_and_zeroing_a_stage_is_not(resnet: Backbone) -> None:
    x = _small_pixels(2)
    with torch.no_grad():
        plain = resnet.forward(x)
        with resnet.edit("layer2", lambda tokens_btd: tokens_btd + 0.0):
            same = resnet.forward(x)
        with resnet.edit("layer2", torch.zeros_like):
            zeroed = resnet.forward(x)

    assert torch.equal(plain, same)
    assert not torch.allclose(plain, zeroed)


def test_random_init_is_reproducible_and_has_no_class_names(mobilenet: Backbone) -> None:
    again = load_backbone("torchvision:mobilenet_v2", pretrained=False)

    assert again.weights_fingerprint() == mobilenet.weights_fingerprint()
    assert mobilenet.class_names is None


def test_real_mobilenet_v2_sees_a_cat_in_chelsea() -> None:
    backbone = load_backbone("torchvision:mobilenet_v2", weights=mobilenet_checkpoint())
    image = Image.fromarray(skimage_data.chelsea())

    with torch.no_grad():
        probabilities = backbone.forward(backbone.preprocess.image(image)[None]).softmax(dim=-1)[0]

    assert backbone.class_names is not None and len(backbone.class_names) == 1000
    # the file is torchvision's IMAGENET1K_V1 download, so V1's preprocessing (resize 256, not V2's 232)
    assert backbone.preprocess.resize == 256
    checkpoint = torch.load(mobilenet_checkpoint(), weights_only=True)
    loaded = backbone.model.state_dict()
    # loading (and the probing forward after it) leaves every tensor, BatchNorm statistics included,
    # exactly as in the file
    assert checkpoint.keys() == loaded.keys()
    assert all(torch.equal(loaded[key], checkpoint[key]) for key in checkpoint)
    top = int(probabilities.argmax())
    assert top in IMAGENET_CATS
    assert "cat" in backbone.class_names[top]
    assert backbone.class_names[top] == "Egyptian cat"
    assert probabilities[top] > 0.5


def test_weights_file_round_trip_as_pth(tmp_path: Path, mobilenet: Backbone) -> None:
    generator = torch.Generator().manual_seed(3)
    state = {
        key: value + 0.01 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in mobilenet.model.state_dict().items()
    }
    path = tmp_path / "mobilenet.pth"
    torch.save(state, path)
    source = torchvision.models.mobilenet_v2().eval()
    source.load_state_dict(state)

    loaded = load_backbone("torchvision:mobilenet_v2", weights=path)

    x = _small_pixels(4)
    with torch.no_grad():
        assert torch.equal(loaded.forward(x), source(x))
        assert not torch.allclose(loaded.forward(x), mobilenet.forward(x))


def test_a_head_of_another_size_gets_no_imagenet_names(tmp_path: Path) -> None:
    path = tmp_path / "five.pth"
    torch.save(torchvision.models.mobilenet_v2(num_classes=5).state_dict(), path)

    backbone = load_backbone("torchvision:mobilenet_v2?num_classes=5", weights=path)

    assert backbone.class_names is None
    with torch.no_grad():
        assert backbone.forward(_small_pixels()).shape == (2, 5)


def test_imagenet_weights_into_a_five_class_head_are_one_line() -> None:
    with pytest.raises(WeightsUnavailableError, match="wrong shape") as caught:
        load_backbone("torchvision:mobilenet_v2?num_classes=5", weights=mobilenet_checkpoint())

    assert "classifier.1.weight (1000, 1280) vs (5, 1280)" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_pretrained_without_network_fails_fast_with_the_ways_out() -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("torchvision:resnet18")

    message = str(caught.value)
    assert "--weights" in message and "--random-init" in message and "ResNet18_Weights" in message
    assert "\n" not in message
    assert time.monotonic() - start < 10


def test_unknown_model_and_rejected_options_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="torchvision has no model 'resnet19'"):
        load_backbone("torchvision:resnet19", pretrained=False)
    with pytest.raises(SpecError, match="widthh"):
        load_backbone("torchvision:mobilenet_v2?widthh=2", pretrained=False)
    with pytest.raises(SpecError, match="unexpected keyword argument 'width_mult'"):
        load_backbone("torchvision:resnet18?width_mult=2", pretrained=False)


@pytest.fixture
def torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchvision download cache (``$TORCH_HOME/hub/checkpoints``), with no network:
    nothing may be downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr("traitlens.backbones.torchvision_provider.reachable", lambda _url: False)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    return cache


def test_pretrained_weights_come_from_torchvisions_cache(torch_cache: Path) -> None:
    shutil.copyfile(mobilenet_checkpoint(), torch_cache / "mobilenet_v2-b0353104.pth")

    cached = load_backbone("torchvision:mobilenet_v2")
    from_file = load_backbone("torchvision:mobilenet_v2", weights=mobilenet_checkpoint())

    assert cached.weights_fingerprint() == from_file.weights_fingerprint()
    # the cached file is IMAGENET1K_V1 (the default is V2): V1's preprocessing and class names
    assert cached.preprocess == from_file.preprocess and cached.preprocess.resize == 256
    assert cached.class_names == from_file.class_names and cached.class_names is not None


def test_pretrained_weights_missing_from_the_cache_are_one_line(torch_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("torchvision:mobilenet_v2")

    message = str(caught.value)
    assert f"not in its cache ({torch_cache / 'mobilenet_v2-7ebf99e0.pth'})" in message and "cannot be reached" in message
    assert "--weights" in message and "\n" not in message
    assert time.monotonic() - start < 10


def test_a_damaged_cached_file_is_one_line(torch_cache: Path) -> None:
    damaged = torch_cache / "mobilenet_v2-b0353104.pth"
    damaged.write_bytes(mobilenet_checkpoint().read_bytes()[:-10])

    with pytest.raises(WeightsUnavailableError, match="SHA-256 does not start with b0353104") as caught:
        load_backbone("torchvision:mobilenet_v2")

    assert "IMAGENET1K_V1" in str(caught.value) and str(damaged) in str(caught.value)
