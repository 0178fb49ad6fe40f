"""Model spec strings: ``PROVIDER:NAME?key=value&...`` parsed into typed constructor options."""

from __future__ import annotations

import pytest

from traitlens.backbones import ModelSpec, parse_spec
from traitlens.backbones.spec import PROVIDERS
from traitlens.errors import SpecError


def test_options_become_typed_keyword_arguments() -> None:
    spec = parse_spec("timm:vit_tiny_patch16_224?img_size=32&drop_rate=0.5&class_token=false&mlp=[1,2]&act=gelu")

    assert spec == ModelSpec(
        provider="timm",
        name="vit_tiny_patch16_224",
        options={"img_size": 32, "drop_rate": 0.5, "class_token": False, "mlp": [1, 2], "act": "gelu"},
        text="timm:vit_tiny_patch16_224?img_size=32&drop_rate=0.5&class_token=false&mlp=[1,2]&act=gelu",
    )
    assert isinstance(spec.options["img_size"], int)


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


@pytest.mark.parametrize(("text", "value"), [("False", False), ("True", True), ("None", None), ("null", None)])
def test_python_spellings_of_literals_are_not_truthy_strings(text: str, value: object) -> None:
    assert parse_spec(f"timm:vit_tiny_patch16_224?class_token={text}").options == {"class_token": value}
