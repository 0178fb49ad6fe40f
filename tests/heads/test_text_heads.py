"""Zero-shot and text-concept heads on a tiny real open_clip CLIP (random weights, real tokenizer)."""

from __future__ import annotations

from typing import Any

import open_clip
import pytest
import torch
from torch.nn import functional as F

from tests.backbones.builders import CLIP_WITH_TOKENIZER as CLIP_SPEC
from tests.backbones.builders import pixels, tiny_open_clip_spec
from traitlens.backbones import Backbone, load_backbone
from traitlens.heads import HeadError, concept_backbone, zero_shot_backbone

from .conftest import HEAD_MODEL


@pytest.fixture(scope="module")
def clip() -> Backbone:
    backbone = load_backbone(CLIP_SPEC, pretrained=False)
    model: Any = backbone.model
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # a scale other than the init, so using it shows
    return backbone


def _hand_logits(clip: Backbone, prompts: list[str], pixels_bchw: torch.Tensor) -> torch.Tensor:
    """CLIP's logits written out: exp(logit_scale) * normalized image @ normalized text."""
    ids_nl = open_clip.get_tokenizer("ViT-B-16", context_length=16)(prompts)
    model: Any = clip.model
    with torch.no_grad():
        text_ne = model.encode_text(ids_nl)
        image_be = model.encode_image(pixels_bchw)
    text_ne = text_ne / text_ne.norm(dim=-1, keepdim=True)
    image_be = image_be / image_be.norm(dim=-1, keepdim=True)
    return torch.exp(torch.tensor(2.0)) * image_be @ text_ne.T


def test_zero_shot_logits_are_scaled_cosines_of_the_prompts(clip: Backbone) -> None:
    names = ["cat", "dog", "ladybird"]
    zero_shot = zero_shot_backbone(clip, names)
    x = pixels(clip, batch=3)
    with torch.no_grad():
        logits_bc = zero_shot.forward(x)
    expected_bc = _hand_logits(clip, [f"a photo of a {name}." for name in names], x)
    assert zero_shot.class_names == names and logits_bc.shape == (3, 3)
    assert torch.allclose(logits_bc, expected_bc, atol=1e-5, rtol=1e-5)
    assert zero_shot.layer_names == clip.layer_names and zero_shot.preprocess == clip.preprocess

    with torch.no_grad():
        other_bc = zero_shot_backbone(clip, names, template="a drawing of a {}").forward(x)
    assert not torch.allclose(other_bc, logits_bc)


def test_concepts_with_and_without_a_reference_and_gradients(clip: Backbone) -> None:
    plain = concept_backbone(clip, "red wing band")
    comparative = concept_backbone(clip, "red wing band", reference="blue wing band")
    assert plain.class_names == ["red wing band"] and comparative.class_names == ["red wing band", "blue wing band"]

    x = pixels(clip).requires_grad_(True)
    with comparative.capture(-1, detach=False) as captured:
        logits_bc = comparative.forward(x)
    expected_bc = _hand_logits(clip, ["red wing band", "blue wing band"], x.detach())
    assert torch.allclose(logits_bc.detach(), expected_bc, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(plain.forward(x), expected_bc[:, :1], atol=1e-5, rtol=1e-5)

    # a comparative map's target: concept minus 0.5 * reference, differentiated to pixels and tokens
    tokens_btd = captured[clip.layer_names[-1]]
    target = (logits_bc[:, 0] - 0.5 * logits_bc[:, 1]).sum()
    grad_tokens_btd, grad_pixels = torch.autograd.grad(target, [tokens_btd, x])
    assert grad_tokens_btd.abs().sum() > 0 and grad_pixels.abs().sum() > 0
    assert F.cosine_similarity(grad_pixels.flatten(), torch.autograd.grad(
        plain.forward(x)[:, 0].sum(), x)[0].flatten(), dim=0) < 0.9999  # the reference changes the map


def test_a_logit_bias_is_added_as_open_clip_does() -> None:
    biased = load_backbone(CLIP_SPEC, pretrained=False)
    model: Any = biased.model
    model.logit_bias = torch.nn.Parameter(torch.tensor(-3.0))  # as open_clip's init_logit_bias makes it (SigLIP)
    x = pixels(biased)
    with torch.no_grad():
        expected_bc, _ = model.get_logits(x, open_clip.get_tokenizer("ViT-B-16", context_length=16)(["a", "b"]))
        assert torch.allclose(concept_backbone(biased, "a", "b").forward(x), expected_bc, atol=1e-5, rtol=1e-5)


def test_models_without_a_usable_text_tower_are_refused() -> None:
    timm_vit = load_backbone(HEAD_MODEL, pretrained=False)
    with pytest.raises(HeadError, match=r"has no text tower; text concepts need a CLIP-style model \(open_clip:") as caught:
        zero_shot_backbone(timm_vit, ["cat", "dog"])
    assert "\n" not in str(caught.value)
    with pytest.raises(HeadError, match="has no text tower"):
        concept_backbone(timm_vit, "stripes")

    small_vocabulary = load_backbone(tiny_open_clip_spec(), pretrained=False)  # vocabulary of 100 tokens
    with pytest.raises(HeadError, match="has a vocabulary of 100"):
        concept_backbone(small_vocabulary, "stripes")


def test_bad_prompts_are_refused(clip: Backbone) -> None:
    with pytest.raises(HeadError, match="has no {} for the class name"):
        zero_shot_backbone(clip, ["cat"], template="a photo")
    with pytest.raises(HeadError, match="distinct"):
        zero_shot_backbone(clip, ["cat", "cat"])
    with pytest.raises(HeadError, match="non-empty"):
        concept_backbone(clip, " ")
    with pytest.raises(HeadError, match="must differ"):
        concept_backbone(clip, "stripes", reference="stripes")
