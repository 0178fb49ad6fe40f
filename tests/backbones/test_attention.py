"""``attention_probs``: a block's self-attention probabilities, read with gradients or edited, for
timm Attention, torch MultiheadAttention (open_clip) and transformers self-attention (ViT, Dinov2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers
from torch import nn

from tests.backbones.builders import all_hook_counts, pixels
from tests.backbones.tiny_transformers import HEADS, KINDS, TINY_EVA02, ToyBlock, load_all_tiny, timm_probs, toy_backbone
from traitlens.backbones import Backbone, attention_probs, load_backbone
from traitlens.errors import LayerError

ATTENTION_MODULE = {"timm": "attn", "specimens": "attn", "open_clip": "attn", "hf_vit": "attention", "hf_dinov2": "attention"}
"""The self-attention module inside each kind's block."""


def _attention(backbone: Backbone, kind: str) -> nn.Module:
    module: nn.Module = getattr(backbone.layer(-1).module, ATTENTION_MODULE[kind])
    return module


def _blur_head0_query0(probs_bhqk: torch.Tensor) -> torch.Tensor:
    """Head 0 of query 0 (the CLS token) attends uniformly: Prompt-CAM's head blurring."""
    blurred_bhqk = probs_bhqk.clone()
    blurred_bhqk[:, 0, 0] = 1.0 / probs_bhqk.shape[-1]
    return blurred_bhqk


def _split_heads(x_btd: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x_btd.shape
    return x_btd.reshape(b, t, heads, d // heads).transpose(1, 2)


def _mha_probs(attention: nn.Module, x_btd: torch.Tensor) -> torch.Tensor:
    """torch's own per-head weights."""
    return attention(x_btd, x_btd, x_btd, need_weights=True, average_attn_weights=False)[1]


def _transformers_probs(attention: nn.Module, x_btd: torch.Tensor) -> torch.Tensor:
    q_bhtc = _split_heads(attention.q_proj(x_btd), attention.num_attention_heads)
    k_bhtc = _split_heads(attention.k_proj(x_btd), attention.num_attention_heads)
    return (q_bhtc @ k_bhtc.transpose(-2, -1) * attention.scaling).softmax(dim=-1)


REFERENCE: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "timm": timm_probs, "specimens": timm_probs, "open_clip": _mha_probs, "hf_vit": _transformers_probs, "hf_dinov2": _transformers_probs,
}
"""Probabilities from the attention module's input, computed without traitlens."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Backbone]:
    return load_all_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("kind", KINDS)
def test_probs_shape_rows_and_untapped_output(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    pixels_bchw = pixels(backbone)
    with torch.no_grad():
        plain = backbone.forward(pixels_bchw)
        with attention_probs(backbone, -1) as found:
            tapped = backbone.forward(pixels_bchw)
    n_tokens = backbone.layer(-1).layout.n_tokens
    assert found["probs"].shape == (2, HEADS[kind], n_tokens, n_tokens)
    torch.testing.assert_close(found["probs"].sum(dim=-1), torch.ones(2, HEADS[kind], n_tokens))
    torch.testing.assert_close(tapped, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_probs_equal_a_computation_from_the_attention_input(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    attention = _attention(backbone, kind)
    inputs: list[torch.Tensor] = []
    handle = attention.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    try:
        with torch.no_grad(), attention_probs(backbone, -1) as found:
            backbone.run_until(pixels(backbone), -1)
        with torch.no_grad():
            expected_bhqk = REFERENCE[kind](attention, inputs[0])
    finally:
        handle.remove()
    torch.testing.assert_close(found["probs"], expected_bhqk, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_blurring_one_head_of_one_query_changes_that_token_only(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    pixels_bchw = pixels(backbone)
    with torch.no_grad():
        # both through the tap, so the untouched tokens go the same way bit for bit
        with attention_probs(backbone, -1):
            plain_btd = backbone.tokens(pixels_bchw, -1)[backbone.layer_names[-1]]
        with attention_probs(backbone, -1, edit=_blur_head0_query0):
            blurred_btd = backbone.tokens(pixels_bchw, -1)[backbone.layer_names[-1]]
    # attention mixes values per query and the MLP is per token: only token 0 can move (by little,
    # with random weights at timm's small init scale)
    torch.testing.assert_close(blurred_btd[:, 1:], plain_btd[:, 1:], atol=1e-7, rtol=0)
    assert (blurred_btd[:, 0] - plain_btd[:, 0]).abs().max() > 1e-5


@pytest.mark.parametrize("kind", ["timm", "specimens"])
def test_blurred_block_equals_a_hand_run_from_the_previous_layer(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    block = backbone.layer(-1).module
    pixels_bchw = pixels(backbone)
    with torch.no_grad():
        with attention_probs(backbone, -1, edit=_blur_head0_query0) as found:
            tokens = backbone.tokens(pixels_bchw, [-2, -1])
        before_btd, after_btd = (tokens[name] for name in backbone.layer_names[-2:])
        expected_btd = _timm_block_by_hand(block, before_btd, _blur_head0_query0)
        expected_probs_bhqk = timm_probs(block.attn, block.norm1(before_btd))
    torch.testing.assert_close(found["probs"], expected_probs_bhqk, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after_btd, expected_btd, atol=1e-5, rtol=1e-4)


def _timm_block_by_hand(block: nn.Module, x_btd: torch.Tensor, edit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """timm's Block (no layer scale, no drop path) with its attention probabilities edited."""
    attention = block.attn
    b, t, d = x_btd.shape
    _, _, v_bhtc = attention.qkv(block.norm1(x_btd)).reshape(b, t, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)
    probs_bhqk = edit(timm_probs(attention, block.norm1(x_btd)))
    mixed_btd = (probs_bhqk @ v_bhtc).transpose(1, 2).reshape(b, t, d)
    x_btd = x_btd + attention.proj(mixed_btd)
    return x_btd + block.mlp(block.norm2(x_btd))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_pixels_through_probs(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    pixels_bchw = pixels(backbone).requires_grad_(True)
    with attention_probs(backbone, -1) as found:
        backbone.run_until(pixels_bchw, -1)
    found["probs"][:, :, 0, 1:].sum().backward()  # a whole row sums to 1: no gradient
    assert pixels_bchw.grad is not None and pixels_bchw.grad.abs().sum() > 0 and pixels_bchw.grad.isfinite().all()


@pytest.mark.parametrize("kind", ["hf_vit", "hf_dinov2"])
def test_transformers_probs_equal_its_eager_attentions_and_model_setting_stays(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    config = backbone.model.config
    pixels_bchw = pixels(backbone)
    config._attn_implementation = "eager"  # transformers returns its attention probabilities only when eager
    try:
        with torch.no_grad():
            eager_bhqk = backbone.model(pixel_values=pixels_bchw, output_attentions=True).attentions[-1]
            with attention_probs(backbone, -1) as found:
                backbone.run_until(pixels_bchw, -1)
                assert config._attn_implementation == "eager"
    finally:
        config._attn_implementation = "sdpa"
    torch.testing.assert_close(found["probs"], eager_bhqk, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_and_attributes_restored_after_an_error(tiny: dict[str, Backbone], kind: str) -> None:
    backbone = tiny[kind]
    attention = _attention(backbone, kind)
    before = (all_hook_counts(backbone), dict(vars(attention)))
    with pytest.raises(RuntimeError, match="inside"), attention_probs(backbone, -1):
        backbone.run_until(pixels(backbone), -1)
        raise RuntimeError("inside")
    assert (all_hook_counts(backbone), dict(vars(attention))) == before
    with attention_probs(backbone, -1):  # and the layer can be tapped again
        pass


def test_eva_attention_with_rotary_embeddings_reads_as_timm() -> None:
    backbone = load_backbone(TINY_EVA02, pretrained=False)
    pixels_bchw = pixels(backbone)
    with torch.no_grad():
        plain = backbone.forward(pixels_bchw)
        with attention_probs(backbone, -1) as found:
            tapped = backbone.forward(pixels_bchw)
    torch.testing.assert_close(tapped, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(found["probs"].sum(dim=-1), torch.ones(found["probs"].shape[:-1]))


# MultiheadAttention as other blocks call it ---------------------------------------------------------


def _mha_toy(batch_first: bool) -> tuple[Backbone, ToyBlock]:
    torch.manual_seed(0)
    block = ToyBlock(nn.MultiheadAttention(8, 2, batch_first=batch_first)).eval()
    return toy_backbone(block, width=8, n_tokens=5, sequence_first=not batch_first), block


def _mha_masks(dtype: torch.dtype, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention mask, (q, k) or (b * heads, q, k), and a key padding mask that leaves out the
    second image's last key; boolean (True: left out) or additive."""
    shape = (5, 5) if dims == 2 else (2 * 2, 5, 5)
    padding_bk = torch.tensor([[False] * 5, [False] * 4 + [True]])
    if dtype == torch.bool:
        return (torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.7) & ~torch.eye(5, dtype=torch.bool), padding_bk
    return torch.randn(shape), torch.zeros(2, 5).masked_fill(padding_bk, float("-inf"))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(("dtype", "mask_dims"), [(torch.float32, 2), (torch.float32, 3), (torch.bool, 2), (torch.bool, 3)])
def test_multihead_attention_with_masks_matches_torch(batch_first: bool, dtype: torch.dtype, mask_dims: int) -> None:
    backbone, block = _mha_toy(batch_first)
    tokens_btd = torch.randn(2, 5, 8)
    block.attn_mask, block.key_padding_mask = _mha_masks(dtype, mask_dims)
    with torch.no_grad():
        plain = backbone.forward(tokens_btd)
        with attention_probs(backbone, "block") as found:
            tapped = backbone.forward(tokens_btd)
        x = tokens_btd if batch_first else tokens_btd.transpose(0, 1)
        _, expected_bhqk = block.attention(x, x, x, attn_mask=block.attn_mask, key_padding_mask=block.key_padding_mask,
                                           need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(tapped, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(found["probs"], expected_bhqk, atol=1e-5, rtol=1e-4)
    assert found["probs"][1, :, :, -1].abs().max() == 0


def test_multihead_attention_returns_weights_when_asked() -> None:
    backbone, block = _mha_toy(batch_first=True)
    x_btd = torch.randn(2, 5, 8)
    with torch.no_grad():
        plain_out, plain_weights = block.attention(x_btd, x_btd, x_btd)
        with attention_probs(backbone, "block"):
            tapped_out, tapped_weights = block.attention(x_btd, x_btd, x_btd)
    torch.testing.assert_close(tapped_out, plain_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(tapped_weights, plain_weights, atol=1e-5, rtol=1e-4)


def test_transformers_attention_with_a_boolean_mask_matches_sdpa() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=8, num_attention_heads=2)
    config._attn_implementation = "sdpa"
    block = ToyBlock(transformers.models.vit.modeling_vit.ViTAttention(config), call="hf").eval()
    block.attn_mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    block.attn_mask[1, :, :, -1] = False  # sdpa's convention: True is kept
    backbone = toy_backbone(block, width=8, n_tokens=5)
    tokens_btd = torch.randn(2, 5, 8)
    with torch.no_grad():
        plain = backbone.forward(tokens_btd)
        with attention_probs(backbone, "block") as found:
            tapped = backbone.forward(tokens_btd)
    torch.testing.assert_close(tapped, plain, atol=1e-5, rtol=0)
    assert found["probs"][1, :, :, -1].abs().max() == 0


# refusals ----------------------------------------------------------------------------------------


def _one_line_error(backbone: Backbone, layer: str | int, match: str, edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    with pytest.raises(LayerError, match=match) as raised, attention_probs(backbone, layer, edit=edit):
        backbone.run_until(pixels(backbone), layer)
    assert "\n" not in str(raised.value)


def test_refuses_a_cnn_layer() -> None:
    _one_line_error(load_backbone("traitlens:specimens-cnn", pretrained=False), -1,
                    "layer layer4 of traitlens:specimens-cnn is a feature map, not a transformer block")


def test_refuses_a_block_without_attention_it_can_read() -> None:
    backbone = toy_backbone(ToyBlock(nn.Linear(8, 8), call="plain"), width=8, n_tokens=5)
    _one_line_error(backbone, "block", r"no self-attention traitlens can read in layer block of toy \(supported: timm Attention, "
                                       r"torch MultiheadAttention, transformers ViT self-attention\)")


def test_refuses_a_block_with_two_attentions() -> None:
    two = nn.ModuleDict({"first": nn.MultiheadAttention(8, 2), "second": nn.MultiheadAttention(8, 2)})
    backbone = toy_backbone(ToyBlock(two, call="plain"), width=8, n_tokens=5)
    _one_line_error(backbone, "block", r"holds 2 self-attention modules \(attention.first, attention.second\)")


class _FusedOnly(nn.Module):
    """Looks like timm Attention but never runs the probabilities through ``attn_drop``."""

    def __init__(self) -> None:
        super().__init__()
        self.fused_attn = True
        self.attn_drop = nn.Dropout(0.0)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        return x_btd


def test_refuses_a_look_alike_that_never_gives_its_probabilities() -> None:
    backbone = toy_backbone(ToyBlock(_FusedOnly(), call="plain"), width=8, n_tokens=5)
    _one_line_error(backbone, "block", "looks like a timm Attention but did not compute its probabilities the way traitlens reads them")


def test_refuses_multihead_attention_with_key_value_biases() -> None:
    backbone = toy_backbone(ToyBlock(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)), width=8, n_tokens=5)
    _one_line_error(backbone, "block", "adds key/value biases or a zero key")


def test_refuses_nested_taps_and_bad_edits(tiny: dict[str, Backbone]) -> None:
    backbone = tiny["timm"]
    with attention_probs(backbone, -1), pytest.raises(LayerError, match="already read by another attention_probs block"):
        with attention_probs(backbone, "blocks.1"):
            pass
    _one_line_error(backbone, -1, r"must return probabilities of shape \(2, 2, 5, 5\), got \(2, 5, 5\)", edit=lambda p: p[:, 0])
