"""Model spec strings: ``PROVIDER:NAME?key=value&...`` parsed into typed constructor options."""

from __future__ import annotations

import pytest

from traitlens.backbones import ModelSpec, parse_spec
from traitlens.backbones.spec import PROVIDERS
from traitlens.errors import SpecError


def test_options_become_typed_keyword_arguments() -> None:
    text = "timm:vit_tiny_patch16_224?img_size=[32,48]&depth=2&drop_rate=0.5&class_token=false&global_pool=avg&act_layer=gelu"
    spec = parse_spec(text)

    assert spec == ModelSpec(
        provider="timm",
        name="vit_tiny_patch16_224",
        options={"img_size": [32, 48], "depth": 2, "drop_rate": 0.5, "class_token": False, "global_pool": "avg",
                 "act_layer": "gelu"},
        text=text,
    )
    assert isinstance(spec.options["depth"], int)


def test_json_object_options_stay_dicts() -> None:
    spec = parse_spec('open_clip:ViT-B-16?vision_cfg={"layers":2,"width":64}')

    assert spec.options == {"vision_cfg": {"layers": 2, "width": 64}}


def test_only_the_first_colon_separates_the_provider() -> None:
    assert parse_spec("open_clip:hf-hub:imageomics/bioclip").name == "hf-hub:imageomics/bioclip"
    assert parse_spec("hf:/tmp/some dir/model").name == "/tmp/some dir/model"
    assert parse_spec("open_clip:ViT-B-16/openai").name == "ViT-B-16/openai"


def test_empty_option_pairs_are_ignored_and_a_spec_without_options_has_none() -> None:
    assert parse_spec("timm:resnet18?&depth=2&").options == {"depth": 2}
    assert parse_spec("timm:resnet18").options == {}


@pytest.mark.parametrize("text", ["resnet18", "timm:", ":resnet18", ""])
def test_a_spec_must_be_provider_colon_name(text: str) -> None:
    with pytest.raises(SpecError, match="PROVIDER:NAME"):
        parse_spec(text)


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("keras:resnet50")

    message = str(caught.value)
    assert "'keras'" in message
    for provider in ("hf", "open_clip", "timm", "torchvision"):
        assert provider in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["timm:vit_tiny_patch16_224?depth", "timm:vit_tiny_patch16_224?=2"])
def test_malformed_options_are_spec_errors(text: str) -> None:
    with pytest.raises(SpecError, match="not key=value"):
        parse_spec(text)


def test_the_four_providers_are_registered() -> None:
    assert {"timm", "open_clip", "hf", "torchvision"} <= set(PROVIDERS)


@pytest.mark.parametrize(("text", "value"), [("False", False), ("True", True), ("false", False), ("true", True)])
def test_python_spellings_of_literals_are_not_truthy_strings(text: str, value: object) -> None:
    assert parse_spec(f"timm:vit_tiny_patch16_224?class_token={text}").options == {"class_token": value}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # options that load files, run code or turn safe loading off, for every provider
        ("timm:vit_tiny_patch16_224?checkpoint_path=/tmp/evil.pt", "timm models take no option 'checkpoint_path'"),
        ('timm:vit_tiny_patch16_224?pretrained_cfg_overlay={"file":"/tmp/evil.pt"}', "no option 'pretrained_cfg_overlay'"),
        ('timm:vit_tiny_patch16_224?pretrained_cfg={"url":"file:///tmp/evil.pt"}', "no option 'pretrained_cfg'"),
        ("timm:vit_tiny_patch16_224?cache_dir=/tmp", "no option 'cache_dir'"),
        ("open_clip:ViT-B-32/openai?weights_only=false", "open_clip models take no option 'weights_only'"),
        ("open_clip:ViT-B-32?pretrained_image_path=/tmp/evil.pt", "no option 'pretrained_image_path'"),
        ("open_clip:ViT-B-32?jit=true", "no option 'jit'"),
        ('open_clip:ViT-B-32?text_cfg={"hf_model_name":"/tmp/evil"}', "text_cfg has no field 'hf_model_name'"),
        ('open_clip:ViT-B-32?vision_cfg={"timm_model_name":"local-dir:/tmp"}', "vision_cfg.timm_model_name must be a name"),
        ("hf:facebook/dinov2-small?trust_remote_code=true", "hf models take no option 'trust_remote_code'"),
        ("hf:facebook/dinov2-small?code_revision=main", "no option 'code_revision'"),
        ("hf:facebook/dinov2-small?auto_map={}", "no option 'auto_map'"),
        ("torchvision:resnet18?weights=IMAGENET1K_V1", "torchvision models take no option 'weights'"),
        ("torchvision:resnet18?progress=true", "no option 'progress'"),
        ("traitlens:specimens-vit?depth=2", "traitlens models take no option 'depth' (they take none)"),
    ],
)
def test_options_outside_the_providers_allow_list_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)

    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_option_names_the_allowed_ones() -> None:
    with pytest.raises(SpecError, match=r"take no option 'depthh' \(allowed: .*depth, .*img_size"):
        parse_spec("timm:vit_tiny_patch16_224?depthh=2")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("timm:vit_tiny_patch16_224?class_token=null", "class_token must be true or false, got null"),
        ("timm:vit_tiny_patch16_224?depth=true", "depth must be an integer from 0"),
        ("timm:vit_tiny_patch16_224?depth=-1", "depth must be an integer from 0"),
        ("timm:vit_tiny_patch16_224?depth=2.5", "depth must be an integer from 0"),
        ("timm:vit_tiny_patch16_224?drop_rate=NaN", "drop_rate must be a number from 0"),
        ("timm:vit_tiny_patch16_224?drop_rate=Infinity", "drop_rate must be a number from 0"),
        ("timm:vit_tiny_patch16_224?img_size=[32]", "img_size must be an image size"),
        ("timm:vit_tiny_patch16_224?global_pool=/tmp", "global_pool must be one of"),
        ("timm:vit_tiny_patch16_224?act_layer=../x", "act_layer must be a name"),
        ('open_clip:ViT-B-32?vision_cfg={"width":"64"}', 'vision_cfg.width must be an integer from 1'),
        ("open_clip:ViT-B-32?vision_cfg=[1]", "vision_cfg must be a JSON object"),
        ("timm:vit_tiny_patch16_224?depth=2&depth=3", "gives option 'depth' twice"),
    ],
)
def test_option_values_of_the_wrong_type_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)

    assert fragment in str(caught.value), str(caught.value)


def test_a_huge_spec_gives_a_short_line() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("timm:vit_tiny_patch16_224?depth=" + "[" * 10_000)

    assert len(str(caught.value)) < 300
