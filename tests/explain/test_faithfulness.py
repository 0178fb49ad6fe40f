"""Faithfulness metrics on models whose answers are known by hand, and on the real MobileNetV2."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torch import nn

from tests.pretrained import mobilenet_checkpoint
from traitlens.backbones import Backbone, Preprocess, load_backbone
from traitlens.backbones.probe import probe_layers
from traitlens.errors import TraitlensError
from traitlens.explain.faithfulness import (
    FaithfulnessConfig,
    FaithfulnessError,
    deletion_auc,
    faithfulness_summary,
    fill_pixels,
    insertion_auc,
    rd_at_k,
)

LOOKALIKE_BIAS = -2.0


class PixelLogitModel(nn.Module):
    """Three classes: logit 0 = Σ weights · channel 0 of the pixels (the only one that looks at
    the image), logit 1 = 0 (the look-alike), logit 2 = -2 (a far class)."""

    def __init__(self, weights_hw: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.readout = nn.Linear(weights_hw.numel(), 3)
        with torch.no_grad():
            self.readout.weight.zero_()
            self.readout.weight[0] = weights_hw.flatten()
            self.readout.bias.copy_(torch.tensor([0.0, 0.0, LOOKALIKE_BIAS]))
        self.batch_sizes: list[int] = []

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(pixels_bchw.shape[0])
        return self.readout(self.features(pixels_bchw)[:, 0].flatten(1))


def pixel_logit_backbone(weights_hw: torch.Tensor) -> tuple[Backbone, PixelLogitModel]:
    model = PixelLogitModel(weights_hw)
    size_hw = (weights_hw.shape[0], weights_hw.shape[1])
    layers = probe_layers([("features", model.features)], model, size_hw)
    model.batch_sizes.clear()
    return Backbone("toy:pixel-logit", model, layers, Preprocess(size_hw=size_hw, resize=size_hw[0]), model), model


def p_target(z: float) -> float:
    """Softmax probability of class 0 when its logit is z."""
    return math.exp(z) / (math.exp(z) + 1.0 + math.exp(LOOKALIKE_BIAS))


def lead(z: float) -> float:
    """p[class 0] − p[class 1] when class 0's logit is z."""
    return (math.exp(z) - 1.0) / (math.exp(z) + 1.0 + math.exp(LOOKALIKE_BIAS))


def trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))


def region_8x8() -> torch.Tensor:
    """The trait: the top-left 2x2 block of an 8x8 image (4 of 64 pixels)."""
    region_hw = torch.zeros(8, 8, dtype=torch.bool)
    region_hw[:2, :2] = True
    return region_hw


def trait_images(batch: int = 2) -> torch.Tensor:
    """Channel 0 is 1 on the trait and noise elsewhere (unseen by the model: its weights are 0)."""
    pixels_bchw = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pixels_bchw[:, 0][:, region_8x8()] = 1.0
    return pixels_bchw


def test_rd_is_one_for_a_heatmap_on_the_trait_and_zero_elsewhere() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    pixels = trait_images()
    on_trait = region_8x8().float().expand(2, 8, 8)
    # hottest far from the trait, which comes last of all 64 pixels
    elsewhere = (torch.arange(8.0)[:, None] + torch.arange(8.0)).expand(2, 8, 8)
    config = FaithfulnessConfig(percents=(5, 10, 20))

    rd_on = rd_at_k(backbone, pixels, on_trait, config=config)
    rd_off = rd_at_k(backbone, pixels, elsewhere, config=config)

    # 5% of 64 pixels = 3 (floored) trait pixels hidden: logit 4 → 1; 10% and 20% hide all 4: logit 0, no lead left
    expected_5 = (lead(4.0) - lead(1.0)) / lead(4.0)
    assert rd_on.shape == (2, 3) and rd_on.dtype == torch.float64
    assert rd_on[:, 0].tolist() == pytest.approx([expected_5] * 2, rel=1e-5)
    assert rd_on[:, 1:].flatten().tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert rd_off.flatten().tolist() == pytest.approx([0.0] * 6, abs=1e-6)


def test_rd_reference_defaults_to_the_runner_up_and_can_be_given() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    pixels = trait_images(batch=1)
    on_trait = region_8x8().float()[None]
    config = FaithfulnessConfig(percents=(5,))

    runner_up = rd_at_k(backbone, pixels, on_trait, config=config)
    far_class = rd_at_k(backbone, pixels, on_trait, targets=[0], references=[2], config=config)

    def lead_over_far(z: float) -> float:
        return p_target(z) - math.exp(LOOKALIKE_BIAS) / (math.exp(z) + 1.0 + math.exp(LOOKALIKE_BIAS))

    assert float(runner_up[0, 0]) == pytest.approx((lead(4.0) - lead(1.0)) / lead(4.0), rel=1e-5)
    assert float(far_class[0, 0]) == pytest.approx((lead_over_far(4.0) - lead_over_far(1.0)) / lead_over_far(4.0), rel=1e-5)


def test_rd_is_nan_where_the_target_does_not_lead_its_reference() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    heat = region_8x8().float().expand(2, 8, 8)

    # class 1 (logit 0) trails class 0 (logit 4): no lead to drop
    rd = rd_at_k(backbone, trait_images(), heat, targets=[0, 1], references=[1, 0])

    assert not rd[0].isnan().any()
    assert rd[1].isnan().all()


def test_fills_replace_hidden_pixels_as_documented() -> None:
    backbone, _ = pixel_logit_backbone(0.25 * region_8x8().float())
    pixels = torch.zeros(1, 3, 8, 8)
    pixels[0, 0][region_8x8()] = 4.0  # logit 0.25 · 4 · 4 = 4; channel 0's image mean is 16 / 64 = 0.25
    heat = region_8x8().float()[None]
    config = FaithfulnessConfig(percents=(10,))

    zero = rd_at_k(backbone, pixels, heat, config=config)
    mean = rd_at_k(backbone, pixels, heat, config=FaithfulnessConfig(percents=(10,), rd_fill="mean"))

    assert float(zero) == pytest.approx(1.0, abs=1e-6)
    # the mean fill puts 0.25 on the trait: logit 0.25 · 4 · 0.25
    assert float(mean) == pytest.approx((lead(4.0) - lead(0.25)) / lead(4.0), rel=1e-5)


def test_blur_fill_keeps_flat_colour_so_hiding_it_changes_nothing() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    flat = torch.ones(1, 3, 8, 8)
    heat = region_8x8().float()[None]

    blur = rd_at_k(backbone, flat, heat, config=FaithfulnessConfig(percents=(10,), rd_fill="blur"))
    zero = rd_at_k(backbone, flat, heat, config=FaithfulnessConfig(percents=(10,), rd_fill="zero"))

    assert float(blur) == pytest.approx(0.0, abs=1e-6)
    assert float(zero) == pytest.approx(1.0, abs=1e-6)


def test_fill_pixels_zero_mean_and_gaussian_blur() -> None:
    pixels = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    impulse = torch.zeros(1, 1, 33, 33)
    impulse[0, 0, 16, 16] = 1.0
    sigma = 2.0

    blurred = fill_pixels(impulse, "blur", blur_sigma=sigma)[0, 0]
    mean = fill_pixels(pixels, "mean")

    assert torch.equal(fill_pixels(pixels, "zero"), torch.zeros_like(pixels))
    assert torch.allclose(mean, pixels.mean(dim=(2, 3))[:, :, None, None].expand_as(pixels))
    # a Gaussian: mass kept, and one pixel off-centre weighs exp(-1 / 2σ²) of the centre
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(blurred[16, 17] / blurred[16, 16]) == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-4)
    assert float(blurred[18, 16] / blurred[16, 16]) == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-4)


# a 2x3 image, channel 0 all ones; logit 0 = Σ weights over the pixels still showing
LINEAR_WEIGHTS = [[2.0, -1.0, 0.5], [1.5, 0.0, 1.0]]
# decreasing heat, ties in row-major order: pixels 1, 3 (both 0.9), 5, 2, 4, 0
LINEAR_HEAT = [[0.1, 0.9, 0.5], [0.9, 0.2, 0.7]]


@pytest.mark.parametrize(
    ("steps", "deletion_logits", "insertion_logits", "fractions"),
    [
        # two pixels a step
        (3, [4.0, 3.5, 2.0, 0.0], [0.0, 0.5, 2.0, 4.0], [0, 1 / 3, 2 / 3, 1]),
        # one pixel a step: the tie between pixels 1 and 3 is resolved in row-major order
        (6, [4.0, 5.0, 3.5, 2.5, 2.0, 2.0, 0.0], [0.0, -1.0, 0.5, 1.5, 2.0, 2.0, 4.0], [i / 6 for i in range(7)]),
        # unequal chunks: ⌊i·6/4⌋ = 0, 1, 3, 4, 6 pixels moved
        (4, [4.0, 5.0, 2.5, 2.0, 0.0], [0.0, -1.0, 1.5, 2.0, 4.0], [0, 1 / 6, 1 / 2, 2 / 3, 1]),
    ],
)
def test_deletion_and_insertion_auc_match_the_hand_computed_trapezoid(
    steps: int, deletion_logits: list[float], insertion_logits: list[float], fractions: list[float]
) -> None:
    backbone, _ = pixel_logit_backbone(torch.tensor(LINEAR_WEIGHTS))
    pixels = torch.ones(1, 3, 2, 3)
    heat = torch.tensor([LINEAR_HEAT])
    config = FaithfulnessConfig(steps=steps, deletion_fill="zero", insertion_fill="zero")

    deletion = deletion_auc(backbone, pixels, heat, config=config)
    insertion = insertion_auc(backbone, pixels, heat, config=config)

    assert deletion.shape == (1,) and deletion.dtype == torch.float64
    assert float(deletion) == pytest.approx(trapezoid(fractions, [p_target(z) for z in deletion_logits]), rel=1e-6)
    assert float(insertion) == pytest.approx(trapezoid(fractions, [p_target(z) for z in insertion_logits]), rel=1e-6)


def test_equal_heat_is_taken_in_row_major_pixel_order() -> None:
    backbone, _ = pixel_logit_backbone(torch.tensor(LINEAR_WEIGHTS))
    pixels = torch.ones(1, 3, 2, 3)
    config = FaithfulnessConfig(steps=6)
    row_major = -torch.arange(6.0).view(1, 2, 3)

    flat = deletion_auc(backbone, pixels, torch.zeros(1, 2, 3), config=config)

    assert torch.equal(flat, deletion_auc(backbone, pixels, row_major, config=config))
    assert not torch.equal(flat, deletion_auc(backbone, pixels, -row_major, config=config))


def test_heatmap_on_the_trait_deletes_faster_and_inserts_faster_than_one_elsewhere() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    pixels = trait_images()
    on_trait = region_8x8().float().expand(2, 8, 8)
    elsewhere = region_8x8().flip(0, 1).float().expand(2, 8, 8)
    config = FaithfulnessConfig(steps=16, blur_sigma=2.0)

    deletion_on, deletion_off = (deletion_auc(backbone, pixels, heat, config=config) for heat in (on_trait, elsewhere))
    insertion_on, insertion_off = (insertion_auc(backbone, pixels, heat, config=config) for heat in (on_trait, elsewhere))

    assert (deletion_on < deletion_off).all()
    assert (insertion_on > insertion_off).all()


def test_batching_changes_nothing_and_respects_max_batch() -> None:
    backbone, model = pixel_logit_backbone(torch.randn(6, 6, generator=torch.Generator().manual_seed(2)))
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 6, 6, generator=generator)
    heat = torch.rand(3, 6, 6, generator=generator)
    one_by_one = FaithfulnessConfig(steps=5, max_batch=1)
    batched = FaithfulnessConfig(steps=5, max_batch=7)

    single = deletion_auc(backbone, pixels, heat, config=one_by_one)
    model.batch_sizes.clear()
    together = deletion_auc(backbone, pixels, heat, config=batched)

    assert torch.allclose(single, together, rtol=1e-6, atol=1e-9)
    # one clean forward of 3, then 3 images x 6 points = 18 composites in chunks of at most 7
    assert model.batch_sizes == [3, 7, 7, 4]
    assert torch.allclose(
        rd_at_k(backbone, pixels, heat, config=FaithfulnessConfig(max_batch=1)),
        rd_at_k(backbone, pixels, heat, config=FaithfulnessConfig(max_batch=64)),
        rtol=1e-6, atol=1e-9, equal_nan=True,
    )


def test_summary_is_the_mean_of_the_per_image_metrics() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    pixels = trait_images()
    heat = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(4))
    config = FaithfulnessConfig(percents=(1, 12.5), steps=8)

    summary = faithfulness_summary(backbone, pixels, heat, config=config)

    rd = rd_at_k(backbone, pixels, heat, config=config)
    assert set(summary) == {"rd@1", "rd@12.5", "deletion_auc", "insertion_auc", "n_images", "n_rd_undefined"}
    assert summary["rd@12.5"] == pytest.approx(float(rd[:, 1].mean()))
    assert summary["deletion_auc"] == pytest.approx(float(deletion_auc(backbone, pixels, heat, config=config).mean()))
    assert summary["insertion_auc"] == pytest.approx(float(insertion_auc(backbone, pixels, heat, config=config).mean()))
    assert summary["n_images"] == 2 and summary["n_rd_undefined"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"percents": (0,)}, "percents for RD@k must be in (0, 100]"),
        ({"percents": (5, 101)}, "percents for RD@k must be in (0, 100]"),
        ({"percents": ()}, "percents for RD@k must be in (0, 100]"),
        ({"steps": -3}, "steps must be a positive integer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"insertion_fill": "black"}, "unknown insertion_fill 'black'; choose from blur, mean, zero"),
        ({"blur_sigma": 0.0}, "blur_sigma must be positive"),
        ({"max_batch": 0}, "max_batch must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(FaithfulnessError) as raised:
        FaithfulnessConfig(**options)  # type: ignore[arg-type]

    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("pixels_shape", "heat_shape", "call_options", "message"),
    [
        ((2, 3, 8, 8), (2, 8, 7), {}, "heatmaps must be (b, h, w) = (2, 8, 8) to match the pixels, got (2, 8, 7)"),
        ((2, 3, 8, 8), (1, 8, 8), {}, "heatmaps must be (b, h, w) = (2, 8, 8)"),
        ((3, 8, 8), (3, 8, 8), {}, "pixels must be a non-empty batch (b, c, h, w)"),
        ((2, 3, 8, 8), (2, 8, 8), {"targets": [0, 3]}, "targets 3 is out of range: the head has 3 classes (0..2)"),
        ((2, 3, 8, 8), (2, 8, 8), {"targets": [0]}, "targets must be 2 integer class indices"),
        ((2, 3, 8, 8), (2, 8, 8), {"references": [0, 0]}, "each reference class must differ from its image's target"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    pixels_shape: tuple[int, ...], heat_shape: tuple[int, ...], call_options: dict[str, object], message: str
) -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())

    with pytest.raises(TraitlensError) as raised:
        rd_at_k(backbone, torch.zeros(pixels_shape), torch.zeros(heat_shape), **call_options)  # type: ignore[arg-type]

    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_non_finite_heatmaps_are_refused() -> None:
    backbone, _ = pixel_logit_backbone(region_8x8().float())
    heat = torch.zeros(1, 8, 8)
    heat[0, 3, 3] = math.nan

    with pytest.raises(FaithfulnessError, match="heatmaps must be finite"):
        deletion_auc(backbone, torch.zeros(1, 3, 8, 8), heat)


def test_real_mobilenet_deletes_the_cat_faster_along_its_saliency_than_along_the_inverse() -> None:
    backbone = load_backbone("torchvision:mobilenet_v2", weights=mobilenet_checkpoint())
    pixels = backbone.preprocess.image(Image.fromarray(skimage_data.chelsea()))[None].requires_grad_(True)
    logits = backbone.forward(pixels)
    logits[0, logits[0].argmax()].backward()
    assert pixels.grad is not None
    # gradient saliency, smoothed into regions: high on what makes the model say "cat"
    saliency = fill_pixels(pixels.grad.abs().sum(dim=1, keepdim=True), "blur", blur_sigma=8.0)[:, 0]
    config = FaithfulnessConfig(steps=8, max_batch=9)

    along = deletion_auc(backbone, pixels.detach(), saliency, config=config)
    inverse = deletion_auc(backbone, pixels.detach(), -saliency, config=config)

    assert float(along) < float(inverse)
