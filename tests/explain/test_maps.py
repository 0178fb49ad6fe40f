"""CAM maps on real architectures: ranges and sizes, Finer-CAM's cost and its gamma = 0 limit,
references, hooks after errors, and a head other than the model's own."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.explain.conftest import EGYPTIAN_CAT, ESPRESSO, TABBY_CAT, pearson_b, photo
from traitlens.backbones import Backbone
from traitlens.explain import METHODS, ExplainError, cam_maps, compute_cams, default_layer
from traitlens.heads import LinearHead, head_backbone


def _no_hooks_left(backbone: Backbone) -> bool:
    return all(not module._forward_hooks and not module._forward_pre_hooks for module in backbone.model.modules())


@pytest.fixture(scope="module")
def two_photos(mobilenet: Backbone) -> torch.Tensor:
    """(2, 3, 224, 224): the cat and the espresso."""
    return torch.stack([mobilenet.preprocess.image(photo(name)) for name in ("chelsea", "coffee")])


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if method.evidence != "class_attention"])
def test_maps_are_float32_in_unit_range_at_input_size(method: str, vit: Backbone, vit_pixels: torch.Tensor) -> None:
    result = compute_cams(vit, vit_pixels, method)

    assert result.maps_bhw.shape == (3, 64, 64) and result.maps_bhw.dtype == torch.float32
    assert float(result.maps_bhw.min()) == 0.0 and bool((result.maps_bhw.amax(dim=(1, 2)) == 1.0).all())
    assert result.layer == "blocks.2" == default_layer(vit)  # the CLS token reads the last block
    assert torch.equal(result.targets_b, result.logits_bc.argmax(1))
    assert _no_hooks_left(vit)


def test_cam_equals_grad_cam_and_hirescam_for_a_linear_head_on_pooled_features(mobilenet: Backbone,
                                                                               two_photos: torch.Tensor) -> None:
    # MobileNetV2's head is a linear layer on the average of features.18: the gradient of a class
    # score is that class's weights / 49 at every position, so the three methods coincide.
    maps = {method: cam_maps(mobilenet, two_photos, method) for method in ("cam", "grad-cam", "hirescam")}

    assert default_layer(mobilenet) == "features.18"
    assert torch.allclose(maps["cam"], maps["grad-cam"], atol=1e-4)
    assert torch.allclose(maps["cam"], maps["hirescam"], atol=1e-4)


@pytest.mark.parametrize("method", ["cam", "grad-cam", "grad-cam++", "hirescam", "layercam", "score-cam"])
def test_gamma_zero_is_the_base_method_exactly(method: str, vit: Backbone, vit_pixels: torch.Tensor) -> None:
    pixels_bchw = vit_pixels[:2]  # Score-CAM runs one forward per channel (192) and image
    base = compute_cams(vit, pixels_bchw, method)
    finer = compute_cams(vit, pixels_bchw, method, refs_bk="auto", gamma=0.0)
    contrasted = compute_cams(vit, pixels_bchw, method, refs_bk="auto", gamma=0.6)

    assert finer.refs_bk.shape == (2, 3)
    assert torch.equal(finer.maps_bhw, base.maps_bhw)
    assert not torch.equal(contrasted.maps_bhw, base.maps_bhw)


def test_finer_cam_costs_one_forward_and_one_backward_for_the_batch(mobilenet: Backbone, two_photos: torch.Tensor) -> None:
    counts = {"forward": 0, "backward": 0}
    classifier = mobilenet.model.classifier[1]

    def count(kind: str) -> Any:
        def hook(*_: Any) -> None:
            counts[kind] += 1
        return hook

    forward_handle = mobilenet.model.register_forward_pre_hook(count("forward"))
    backward_handle = classifier.register_full_backward_hook(count("backward"))
    try:
        result = compute_cams(mobilenet, two_photos, "grad-cam", refs_bk="auto", n_refs=3)
    finally:
        forward_handle.remove()
        backward_handle.remove()

    assert result.refs_bk.shape == (2, 3)
    assert counts == {"forward": 1, "backward": 1}


def test_auto_references_are_the_highest_scoring_other_classes(mobilenet: Backbone, chelsea_pixels: torch.Tensor) -> None:
    result = compute_cams(mobilenet, chelsea_pixels, "grad-cam", torch.tensor([TABBY_CAT]), "auto", n_refs=2)

    others = result.logits_bc[0].clone()
    others[TABBY_CAT] = float("-inf")
    assert result.refs_bk[0].tolist() == others.topk(2).indices.tolist()
    assert EGYPTIAN_CAT in result.refs_bk[0].tolist()  # the prediction is the tabby's closest rival


def test_a_reference_equal_to_the_target_is_left_out(mobilenet: Backbone, two_photos: torch.Tensor) -> None:
    targets_b = torch.tensor([EGYPTIAN_CAT, ESPRESSO])
    with_target = cam_maps(mobilenet, two_photos, "grad-cam", targets_b, torch.tensor([[EGYPTIAN_CAT, TABBY_CAT]] * 2))
    cat_only = cam_maps(mobilenet, two_photos[:1], "grad-cam", targets_b[:1], torch.tensor([[TABBY_CAT]]))

    # Not bit for bit: a batch of one runs other kernels than a batch of two.
    assert torch.allclose(with_target[:1], cat_only, atol=1e-5)


def test_hooks_are_removed_when_the_forward_pass_fails(vit: Backbone) -> None:
    two_channels = torch.zeros(1, 2, 64, 64)
    for method in ("grad-cam", "score-cam", "eigen-cam"):
        with pytest.raises(RuntimeError):
            cam_maps(vit, two_channels, method)
        assert _no_hooks_left(vit)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "gradcam"}, "unknown method 'gradcam'; choose one of cam, grad-cam,"),
        ({"gamma": -0.5, "refs_bk": "auto"}, "gamma must be a finite number >= 0"),
        ({"targets_b": torch.tensor([10, 0, 0])}, "target class 10 is out of range: the head has 10 classes"),
        ({"refs_bk": torch.tensor([[1], [2], [12]])}, "reference class 12 is out of range"),
        ({"method": "eigen-cam", "refs_bk": "auto"}, "eigen-cam does not depend on the class"),
    ],
)
def test_bad_requests_are_explain_errors(kwargs: dict[str, Any], fragment: str, vit: Backbone, vit_pixels: torch.Tensor) -> None:
    with pytest.raises(ExplainError) as error:
        cam_maps(vit, vit_pixels, **{"method": "grad-cam", **kwargs})
    assert fragment in str(error.value)
    assert _no_hooks_left(vit)


def test_pixels_of_another_size_than_the_layouts_are_refused(mobilenet: Backbone) -> None:
    # A CNN runs on any size, but features.18's layout is the 7x7 grid of 224 px inputs.
    with pytest.raises(ExplainError, match="layer features.18 gave 9 tokens for 96x96 pixels, not the 49 of its layout"):
        cam_maps(mobilenet, torch.zeros(1, 3, 96, 96), "grad-cam")


def test_a_probe_head_plugs_in_and_cam_refuses_the_models_own_classifier(mobilenet: Backbone,
                                                                        chelsea_pixels: torch.Tensor) -> None:
    # A 3-class linear probe on the mean of features.18: its logits are mean(A) @ W.T + b, so its
    # Grad-CAM is relu(A @ w_target) for every position, whatever the model's own head says.
    weight_cd = torch.randn(3, 1280, generator=torch.Generator().manual_seed(0))
    head = LinearHead(weight_cd, torch.zeros(3), "features.18", "mean", ("a", "b", "c"),
                      {"spec": mobilenet.spec, "weights_fingerprint": mobilenet.weights_fingerprint()})
    probed = head_backbone(mobilenet, head)

    result = compute_cams(probed, chelsea_pixels, "grad-cam")

    assert result.targets_b.tolist() == [0]  # the probe's own prediction (its logits: 21.0, -5.4, -30.5)
    tokens_nd = mobilenet.tokens(chelsea_pixels, "features.18")["features.18"][0]
    expected_hw = (tokens_nd @ weight_cd[0]).relu().reshape(1, 1, 7, 7)
    expected_hw = F.interpolate(expected_hw, size=(224, 224), mode="bilinear", align_corners=False)[0]
    assert result.logits_bc.shape == (1, 3)
    assert float(pearson_b(result.maps_bhw, expected_hw)[0]) > 0.9999
    with pytest.raises(ExplainError, match="cam needs a linear classifier with 3 outputs"):
        cam_maps(probed, chelsea_pixels, "cam")


def test_a_class_query_method_needs_a_head_of_its_kind(vit: Backbone, vit_pixels: torch.Tensor) -> None:
    with pytest.raises(ExplainError, match="--method prompt-cam needs a head of kind prompt-cam"):
        compute_cams(vit, vit_pixels, "prompt-cam")
