"""traitlens' CAM methods against pytorch-grad-cam's on the same model, layer and target, at the
model input's resolution: the real ImageNet MobileNetV2 and a random-init timm ViT (for which
pytorch-grad-cam needs a reshape function; traitlens reads the layer's token layout)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pytorch_grad_cam import FinerCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

from tests.explain.conftest import EGYPTIAN_CAT, ESPRESSO, TABBY_CAT, pearson_b, photo
from traitlens.backbones import Backbone
from traitlens.explain import cam_maps

PEERS: dict[str, Any] = {"grad-cam": GradCAM, "grad-cam++": GradCAMPlusPlus, "layercam": LayerCAM, "score-cam": ScoreCAM}
AGREEMENT = 0.99


def _peer_maps(method: str, model: torch.nn.Module, layer: torch.nn.Module, pixels_bchw: torch.Tensor,
               targets: list[int], reshape: Any = None) -> torch.Tensor:
    with PEERS[method](model=model, target_layers=[layer], reshape_transform=reshape) as peer:
        peer.batch_size = 64  # Score-CAM's masked images per forward
        return torch.from_numpy(peer(input_tensor=pixels_bchw, targets=[ClassifierOutputTarget(t) for t in targets]))


def _assert_agree(ours_bhw: torch.Tensor, theirs_bhw: torch.Tensor) -> None:
    # Blank maps would make the correlation meaningless.
    assert bool((ours_bhw.amax(dim=(1, 2)) == 1).all()) and bool((theirs_bhw.amax(dim=(1, 2)) > 0.99).all())
    correlation_b = pearson_b(ours_bhw, theirs_bhw)
    assert bool((correlation_b >= AGREEMENT).all()), correlation_b


@pytest.mark.parametrize("method", ["grad-cam", "grad-cam++", "layercam"])
def test_gradient_methods_agree_on_mobilenet(method: str, mobilenet: Backbone, chelsea_pixels: torch.Tensor) -> None:
    ours = cam_maps(mobilenet, chelsea_pixels, method, torch.tensor([EGYPTIAN_CAT]), layer="features.18")
    theirs = _peer_maps(method, mobilenet.model, mobilenet.model.features[18], chelsea_pixels, [EGYPTIAN_CAT])
    assert ours.shape == theirs.shape == (1, 224, 224)
    _assert_agree(ours, theirs)


def test_score_cam_agrees_on_mobilenet(small_mobilenet: Backbone) -> None:
    # features.16 (160 channels) of 96 px images keeps Score-CAM's 160 masked forwards quick.
    pixels_bchw = small_mobilenet.preprocess.image(photo("coffee"))[None]
    ours = cam_maps(small_mobilenet, pixels_bchw, "score-cam", torch.tensor([ESPRESSO]), layer="features.16")
    theirs = _peer_maps("score-cam", small_mobilenet.model, small_mobilenet.model.features[16], pixels_bchw, [ESPRESSO])
    _assert_agree(ours, theirs)


@pytest.mark.parametrize("method", ["grad-cam", "grad-cam++", "layercam", "score-cam"])
def test_methods_agree_on_a_random_vit(method: str, vit: Backbone, vit_pixels: torch.Tensor) -> None:
    grid_h, grid_w = vit.layer("blocks.2").layout.grid_hw

    def reshape(tokens_btd: torch.Tensor) -> torch.Tensor:
        return tokens_btd[:, 1:].reshape(len(tokens_btd), grid_h, grid_w, -1).permute(0, 3, 1, 2)

    targets = vit.forward(vit_pixels).argmax(1).tolist()
    ours = cam_maps(vit, vit_pixels, method, torch.tensor(targets), layer="blocks.2")
    theirs = _peer_maps(method, vit.model, vit.model.blocks[2], vit_pixels, targets, reshape)
    assert ours.shape == theirs.shape == (3, 64, 64)
    _assert_agree(ours, theirs)


def test_finer_cam_agrees_with_pytorch_grad_cams(mobilenet: Backbone, chelsea_pixels: torch.Tensor) -> None:
    # pytorch-grad-cam weighs references by their softmax probabilities; with one reference the
    # weight cancels and both explain y_target - gamma * y_reference.
    ours = cam_maps(mobilenet, chelsea_pixels, "grad-cam", torch.tensor([EGYPTIAN_CAT]), torch.tensor([[TABBY_CAT]]),
                    gamma=0.6, layer="features.18")
    with FinerCAM(model=mobilenet.model, target_layers=[mobilenet.model.features[18]], base_method=GradCAM) as peer:
        theirs = torch.from_numpy(peer(chelsea_pixels, targets=[FinerWeightedTarget(EGYPTIAN_CAT, [TABBY_CAT], 0.6)]))
    _assert_agree(ours, theirs)


def test_finer_cam_tells_the_egyptian_cat_from_the_tabby(mobilenet: Backbone, chelsea_pixels: torch.Tensor) -> None:
    targets_b = torch.tensor([EGYPTIAN_CAT])
    grad_cam = cam_maps(mobilenet, chelsea_pixels, "grad-cam", targets_b, layer="features.18")
    finer = cam_maps(mobilenet, chelsea_pixels, "grad-cam", targets_b, torch.tensor([[TABBY_CAT]]), layer="features.18")

    assert finer.shape == grad_cam.shape and bool((finer.amax(dim=(1, 2)) == 1).all())
    # Measured: 0.972. Subtracting the tabby's evidence moves the map off what both cats share.
    assert float(pearson_b(finer, grad_cam)[0]) < 0.99
