"""``appended_tokens``: extra tokens in a block's input, gone from its output (deep prompts), for
timm, open_clip and transformers ViTs; ``check_appended_tokens`` for models that refuse them."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch
from torch import nn

from tests.backbones.builders import all_hook_counts, pixels
from tests.backbones.tiny_transformers import HEADS, KINDS, TINY_EVA02, ToyBlock, load_all_tiny, timm_probs, toy_backbone
from traitlens.backbones import Backbone, appended_tokens, attention_probs, check_appended_tokens, load_backbone
from traitlens.errors import LayerError

N_APPENDED = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Backbone]:
    return load_all_tiny(tmp_path_factory.mktemp("tiny"))


def _extra(backbone: Backbone, layer: str | int = -1, seed: int = 3) -> torch.Tensor:
    """(p, d) random tokens of the layer's width."""
    return torch.randn(N_APPENDED, backbone.layer(layer).width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_captures_and_edits_see_the_model_tokens_only(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    name, layer = backbone.layer_names[-1], backbone.layer(-1)
    edited_shapes: list[tuple[int, ...]] = []

    def record(tokens_btd: torch.Tensor) -> torch.Tensor:
        edited_shapes.append(tuple(tokens_btd.shape))
        return tokens_btd

    with torch.no_grad(), backbone.capture(name) as outside, backbone.edit(name, record):
        with appended_tokens(backbone, {name: _extra(backbone)}) as appended, backbone.capture(name) as inside:
            backbone.forward(pixels(backbone))
    model_tokens = (2, layer.layout.n_tokens, layer.width)
    assert outside[name].shape == inside[name].shape == model_tokens and edited_shapes == [model_tokens]
    assert appended[name].shape == (2, N_APPENDED, layer.width)


@pytest.mark.parametrize("kind", KINDS)
def test_block_output_equals_a_hand_run_on_the_longer_sequence(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    before_name, name = backbone.layer_names[-2:]
    pixels_bchw, extra_pd = pixels(backbone), _extra(backbone)
    with torch.no_grad():
        plain_btd = backbone.tokens(pixels_bchw, before_name)[before_name]
        with appended_tokens(backbone, {name: extra_pd}) as appended:
            tokens = backbone.tokens(pixels_bchw, [before_name, name])
        # outside the block no hook is left: the block runs on the longer sequence as the model's own code
        longer_btd = backbone.layer(name).module(torch.cat([plain_btd, extra_pd.expand(2, -1, -1)], dim=1))
    n_tokens = plain_btd.shape[1]
    torch.testing.assert_close(tokens[before_name], plain_btd, atol=0, rtol=0)
    torch.testing.assert_close(tokens[name], longer_btd[:, :n_tokens], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(appended[name], longer_btd[:, n_tokens:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_appended_parameters(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    first, last = backbone.layer_names[0], backbone.layer_names[-1]
    prompts = {first: nn.Parameter(_extra(backbone, first, seed=1)), last: nn.Parameter(_extra(backbone, last, seed=2))}
    with appended_tokens(backbone, prompts) as appended:
        output = backbone.forward(pixels(backbone))
    (output.square().sum() + appended[last].square().sum()).backward()
    for prompt in prompts.values():
        assert prompt.grad is not None and prompt.grad.abs().sum() > 0 and prompt.grad.isfinite().all()


def test_per_image_tokens_and_a_batch_that_does_not_fit(tiny: dict[str, Backbone]) -> None:
    backbone = tiny["timm"]
    name = backbone.layer_names[-1]
    per_image_bpd = torch.randn(2, N_APPENDED, backbone.layer(name).width)
    with torch.no_grad(), appended_tokens(backbone, {name: per_image_bpd}) as appended:
        backbone.forward(pixels(backbone))
        assert appended[name].shape == (2, N_APPENDED, backbone.layer(name).width)
        with pytest.raises(LayerError, match=f"the tokens appended to layer {name} are for a batch of 2, the model runs a batch of 3"):
            backbone.forward(pixels(backbone, batch=3))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("probs_first", [False, True])
def test_composes_with_attention_probs(tiny: dict[str, Backbone], kind: str, probs_first: bool) -> None:
    backbone = tiny[kind]
    name = backbone.layer_names[-1]
    with torch.no_grad(), ExitStack() as stack:
        found = stack.enter_context(attention_probs(backbone, name)) if probs_first else {}
        stack.enter_context(appended_tokens(backbone, {name: _extra(backbone)}))
        found = found if probs_first else stack.enter_context(attention_probs(backbone, name))
        backbone.run_until(pixels(backbone), name)
    n_longer = backbone.layer(name).layout.n_tokens + N_APPENDED
    assert found["probs"].shape == (2, HEADS[kind], n_longer, n_longer)
    torch.testing.assert_close(found["probs"].sum(dim=-1), torch.ones(2, HEADS[kind], n_longer))


def test_appended_queries_are_the_last_rows_of_the_probs(tiny: dict[str, Backbone]) -> None:
    backbone = tiny["timm"]
    before_name, name = backbone.layer_names[-2:]
    extra_pd = _extra(backbone)
    with torch.no_grad():
        with appended_tokens(backbone, {name: extra_pd}), attention_probs(backbone, name) as found:
            plain_btd = backbone.tokens(pixels(backbone), [before_name, name])[before_name]
        block = backbone.layer(name).module
        expected_bhqk = timm_probs(block.attn, block.norm1(torch.cat([plain_btd, extra_pd.expand(2, -1, -1)], dim=1)))
    torch.testing.assert_close(found["probs"], expected_bhqk, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("sequence_first", "keyword"), [(True, False), (False, True)])
def test_sequence_first_blocks_and_hidden_states_calls(sequence_first: bool, keyword: bool) -> None:
    torch.manual_seed(0)
    block = ToyBlock(nn.MultiheadAttention(8, 2, batch_first=not sequence_first)).eval()
    backbone = toy_backbone(block, width=8, n_tokens=5, sequence_first=sequence_first, keyword=keyword)
    tokens_btd, extra_pd = torch.randn(2, 5, 8), torch.randn(N_APPENDED, 8)
    with torch.no_grad():
        with appended_tokens(backbone, {"block": extra_pd}) as appended, backbone.capture("block") as captured:
            backbone.forward(tokens_btd)
        # the toy's "pixels" are its tokens: a plain forward of the longer sequence is the hand-run
        longer_btd = torch.cat([tokens_btd, extra_pd.expand(2, -1, -1)], dim=1)
        expected_btd = backbone.layer("block").codec.to_tokens(backbone.forward(longer_btd))
    torch.testing.assert_close(captured["block"], expected_btd[:, :5], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(appended["block"], expected_btd[:, 5:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_check_appended_tokens_passes_for_supported_vits(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    before = all_hook_counts(backbone)
    check_appended_tokens(backbone, backbone.layer_names)
    assert all_hook_counts(backbone) == before


def _one_line(raised: pytest.ExceptionInfo[LayerError]) -> str:
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_check_appended_tokens_refuses_rotary_position_embeddings() -> None:
    backbone = load_backbone(TINY_EVA02, pretrained=False)
    with pytest.raises(LayerError) as raised:
        check_appended_tokens(backbone, [-1])
    assert _one_line(raised).startswith(f"the blocks of {TINY_EVA02} do not take extra tokens (The size of tensor a")
    assert all_hook_counts(backbone) == 0


def test_refuses_a_cnn_layer() -> None:
    backbone = load_backbone("traitlens:specimens-cnn", pretrained=False)
    with pytest.raises(LayerError) as raised, appended_tokens(backbone, {"layer4": torch.zeros(1, backbone.layer("layer4").width)}):
        pass
    assert _one_line(raised) == ("layer layer4 of traitlens:specimens-cnn: its output is a feature map, not a token sequence; "
                                 "prompts need a transformer's token sequence")


@pytest.mark.parametrize(
    ("tokens_by_layer", "message"),
    [
        ({"blocks.1": torch.zeros(1, 7)}, r"tokens appended to layer blocks.1 must be \(p, 32\) or \(b, p, 32\), got \(1, 7\)"),
        ({"blocks.1": torch.zeros(32)}, r"must be \(p, 32\) or \(b, p, 32\), got \(32,\)"),
        ({"blocks.1": torch.zeros(1, 32), "-1": torch.zeros(1, 32)}, "layer blocks.1 of .* is given twice"),
        ({"blocks.7": torch.zeros(1, 32)}, "unknown layer 'blocks.7'"),
    ],
)
def test_refuses_bad_tokens(tiny: dict[str, Backbone], tokens_by_layer: dict[str, torch.Tensor], message: str) -> None:
    backbone = tiny["timm"]
    with pytest.raises(LayerError, match=message) as raised, appended_tokens(backbone, tokens_by_layer):
        pass
    _one_line(raised)
    assert all_hook_counts(backbone) == 0


def test_hooks_removed_after_an_error(tiny: dict[str, Backbone]) -> None:
    backbone = tiny["timm"]
    with pytest.raises(RuntimeError, match="inside"), appended_tokens(backbone, {"blocks.0": _extra(backbone, 0)}):
        backbone.forward(pixels(backbone))
        raise RuntimeError("inside")
    assert all_hook_counts(backbone) == 0
