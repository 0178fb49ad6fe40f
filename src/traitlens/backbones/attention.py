"""A transformer block's self-attention probabilities, read (with gradients) or edited.

``attention_probs(backbone, layer)`` finds the one self-attention module inside a layer's block and,
while the ``with`` block is open, exposes the (b, heads, t_query, t_key) softmax probabilities of
every forward through it; with ``edit`` the values are weighted by ``edit(probs)`` instead. Three
kinds of module are read, each by what it is, never by model name:

- timm ``Attention``-style modules (``fused_attn`` and ``attn_drop``): the fused kernel never
  materializes the probabilities, so it is switched off and the probabilities are taken (and
  replaced) as they enter ``attn_drop``: the module's own q/k norms, masks and rotary embeddings
  stay its own.
- ``torch.nn.MultiheadAttention``: its forward returns head-averaged weights at best and cannot be
  edited, so a forward hook recomputes the attention from the module's projections for the very
  (query, key, value, masks) the block passed, and returns that output instead.
- transformers self-attention (``config._attn_implementation`` and q/k/v projections): the module
  computes its own queries, keys and values (norms, rotary embeddings included) and hands them to
  transformers' attention interface; while tapped, that one module is pointed at an interface
  function of ours through a private copy of its config, whatever the model's sdpa/eager setting.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.codecs import FeatureMapCodec
from traitlens.errors import LayerError

ProbsEdit = Callable[[torch.Tensor], torch.Tensor]

_OPEN_TAPS: weakref.WeakKeyDictionary[nn.Module, _Tap] = weakref.WeakKeyDictionary()
"""Attention modules tapped right now: one tap each (nesting two would leave one of them blind to
the other's edit in some kinds), and the lookup of the transformers interface function."""


@dataclass
class _Tap:
    """One open ``attention_probs`` block: where the probabilities go and how they are edited."""

    where: str
    """``layer NAME of SPEC``, for messages."""
    kind: str
    edit: ProbsEdit | None
    found: dict[str, torch.Tensor]
    fired: bool = False
    """Whether the probabilities of the forward running now went through the tap."""

    def __call__(self, probs_bhqk: torch.Tensor) -> torch.Tensor:
        """Record the model's probabilities; return what the values are weighted by."""
        if probs_bhqk.dim() != 4:
            raise LayerError(f"the attention of {self.where} gave probabilities of shape {tuple(probs_bhqk.shape)}, "
                             "not (batch, heads, queries, keys)")
        self.fired = True
        self.found["probs"] = probs_bhqk
        if self.edit is None:
            return probs_bhqk
        edited_bhqk = self.edit(probs_bhqk)
        if not isinstance(edited_bhqk, torch.Tensor) or edited_bhqk.shape != probs_bhqk.shape:
            got = tuple(edited_bhqk.shape) if isinstance(edited_bhqk, torch.Tensor) else type(edited_bhqk).__name__
            raise LayerError(f"an attention edit of {self.where} must return probabilities of shape "
                             f"{tuple(probs_bhqk.shape)}, got {got}")
        return edited_bhqk

    def before_forward(self, _module: nn.Module, _args: Any) -> None:
        self.fired = False

    def after_forward(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        """A module that matched a kind but computed its attention another way would otherwise go unread."""
        if not self.fired:
            raise LayerError(f"the attention of {self.where} looks like a {self.kind} but did not compute its "
                             "probabilities the way traitlens reads them")


@dataclass(frozen=True)
class _Kind:
    """A kind of self-attention module traitlens can read, and how it taps one."""

    label: str
    matches: Callable[[nn.Module], bool]
    install: Callable[[nn.Module, _Tap, ExitStack], None]


@contextmanager
def attention_probs(backbone: Backbone, layer: str | int, edit: ProbsEdit | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward through ``layer`` puts its self-attention probabilities
    (b, heads, t_query, t_key), in the autograd graph, under ``"probs"`` of the yielded dict. With
    ``edit``, the values are weighted by ``edit(probs)`` (same shape) instead, so the block's output
    follows; the dict keeps the model's own probabilities. Hooks and switched attributes are
    restored on exit, errors included."""
    resolved = backbone.layer(layer)
    where = f"layer {resolved.name} of {backbone.spec}"
    if isinstance(resolved.codec, FeatureMapCodec):
        raise LayerError(f"{where} is a feature map, not a transformer block: it has no self-attention to read")
    attention, kind = _find_attention(resolved.module, where)
    if attention in _OPEN_TAPS:
        raise LayerError(f"the attention of {where} is already read by another attention_probs block")
    found: dict[str, torch.Tensor] = {}
    tap = _Tap(where, kind.label, edit, found)
    with ExitStack() as stack:
        _OPEN_TAPS[attention] = tap
        stack.callback(_OPEN_TAPS.pop, attention, None)
        stack.callback(attention.register_forward_pre_hook(tap.before_forward).remove)
        kind.install(attention, tap, stack)
        # after the kind's own hooks: by the end of the module's forward the tap must have fired
        stack.callback(attention.register_forward_hook(tap.after_forward).remove)
        yield found


def _find_attention(block: nn.Module, where: str) -> tuple[nn.Module, _Kind]:
    """The one self-attention module of a kind traitlens reads inside ``block`` (or ``block`` itself)."""
    kinds = ((name, module, next((kind for kind in _KINDS if kind.matches(module)), None)) for name, module in block.named_modules())
    matches = [(name, module, kind) for name, module, kind in kinds if kind is not None]
    if not matches:
        supported = ", ".join(kind.label for kind in _KINDS)
        raise LayerError(f"no self-attention traitlens can read in {where} (supported: {supported})")
    if len(matches) > 1:
        names = ", ".join(name or "(the block itself)" for name, _, _ in matches)
        raise LayerError(f"{where} holds {len(matches)} self-attention modules ({names}); traitlens reads blocks with one")
    _, module, kind = matches[0]
    return module, kind


def _switch_attribute(stack: ExitStack, module: nn.Module, name: str, value: Any) -> None:
    """Set ``module.name`` until the stack closes."""
    previous = getattr(module, name)
    setattr(module, name, value)
    stack.callback(setattr, module, name, previous)


# timm ---------------------------------------------------------------------------------------------


def _is_timm(module: nn.Module) -> bool:
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(getattr(module, "attn_drop", None), nn.Module)


def _install_timm(attention: nn.Module, tap: _Tap, stack: ExitStack) -> None:
    # timm's non-fused path is softmax -> attn_drop -> @ v: the probabilities are attn_drop's input,
    # and a pre-hook that replaces that input keeps the module's own dropout after the edit
    _switch_attribute(stack, attention, "fused_attn", False)

    def before_dropout(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (tap(args[0]), *args[1:])

    dropout: nn.Module = attention.attn_drop  # type: ignore[assignment]
    stack.callback(dropout.register_forward_pre_hook(before_dropout).remove)


# torch.nn.MultiheadAttention -----------------------------------------------------------------------

_MHA_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")
"""``nn.MultiheadAttention.forward``'s parameters in order, to read a call given either way."""


def _is_mha(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention)


def _install_mha(attention: nn.Module, tap: _Tap, stack: ExitStack) -> None:
    assert isinstance(attention, nn.MultiheadAttention)
    if attention.bias_k is not None or attention.add_zero_attn:
        raise LayerError(f"the MultiheadAttention of {tap.where} adds key/value biases or a zero key "
                         "(add_bias_kv, add_zero_attn), which traitlens does not read")

    def recompute(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        call = {**dict(zip(_MHA_ARGUMENTS, args, strict=False)), **kwargs}
        return _mha_forward(attention, call, output, tap)

    stack.callback(attention.register_forward_hook(recompute, with_kwargs=True).remove)


def _mha_forward(mha: nn.MultiheadAttention, call: dict[str, Any], output: Any, tap: _Tap) -> tuple[torch.Tensor, Any]:
    """What ``mha`` returned for ``call``, recomputed with its probabilities passed through ``tap``."""
    unbatched = call["query"].dim() == 2
    query_bqe, key_bke, value_bke = (_batch_major(call[name], mha.batch_first, unbatched) for name in ("query", "key", "value"))
    weights_q, weights_k, weights_v = _mha_projections(mha)
    query_bhqe, key_bhke, value_bhke = (
        _split_heads(F.linear(x, weight, bias), mha.num_heads)
        for x, (weight, bias) in ((query_bqe, weights_q), (key_bke, weights_k), (value_bke, weights_v))
    )
    scores_bhqk = query_bhqe @ key_bhke.transpose(-2, -1) * mha.head_dim**-0.5
    scores_bhqk = scores_bhqk + _mha_mask(call.get("attn_mask"), call.get("key_padding_mask"), scores_bhqk)
    weights_bhqk = tap(scores_bhqk.softmax(dim=-1))
    mixed_bqe = _merge_heads(F.dropout(weights_bhqk, mha.dropout, mha.training) @ value_bhke)
    out_bqe = F.linear(mixed_bqe, mha.out_proj.weight, mha.out_proj.bias)
    out = out_bqe[0] if unbatched else out_bqe if mha.batch_first else out_bqe.transpose(0, 1)
    if output[1] is None:  # need_weights=False, as open_clip asks
        return out, None
    weights = weights_bhqk.mean(dim=1) if call.get("average_attn_weights", True) else weights_bhqk
    return out, weights[0] if unbatched else weights


def _batch_major(x: torch.Tensor, batch_first: bool, unbatched: bool) -> torch.Tensor:
    """(b, t, e) from MultiheadAttention's (t, e), (b, t, e) or (t, b, e) inputs."""
    if unbatched:
        return x.unsqueeze(0)
    return x if batch_first else x.transpose(0, 1)


def _mha_projections(mha: nn.MultiheadAttention) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of the query, key and value projections, packed or separate."""
    weights = mha.in_proj_weight.chunk(3) if mha.in_proj_weight is not None else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    return list(zip(weights, biases, strict=True))


def _split_heads(x_bte: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, e = x_bte.shape
    return x_bte.view(b, t, heads, e // heads).transpose(1, 2)


def _merge_heads(x_bhte: torch.Tensor) -> torch.Tensor:
    b, h, t, e = x_bhte.shape
    return x_bhte.transpose(1, 2).reshape(b, t, h * e)


def _mha_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, scores_bhqk: torch.Tensor) -> torch.Tensor | float:
    """MultiheadAttention's masks (boolean: True is left out; float: added) as one additive term."""
    b, h, q, k = scores_bhqk.shape
    total: torch.Tensor | float = 0.0
    if attn_mask is not None:  # (q, k) for all, or (b * heads, q, k)
        total = total + _additive(attn_mask, scores_bhqk, left_out=True).reshape(-1, h if attn_mask.dim() == 3 else 1, q, k)
    if key_padding_mask is not None:  # (b, k)
        total = total + _additive(key_padding_mask, scores_bhqk, left_out=True).reshape(b, 1, 1, k)
    return total


def _additive(mask: torch.Tensor, like: torch.Tensor, left_out: bool) -> torch.Tensor:
    """A boolean mask as 0 / -inf (``left_out``: True marks what is left out, else what is kept), a
    float mask as it is, in ``like``'s dtype."""
    if mask.dtype != torch.bool:
        return mask.to(like.dtype)
    dropped = mask if left_out else ~mask
    return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(dropped, float("-inf"))


# transformers ---------------------------------------------------------------------------------------

_HF_INTERFACE = "traitlens_attention_probs"
"""The name our function is registered under in transformers' attention interface."""
_HF_UNREAD = ("softcap", "sliding_window", "s_aux", "position_bias")
"""Attention-function arguments that change the probabilities in ways traitlens does not reproduce."""


def _is_transformers(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    projections = ("q_proj", "k_proj", "v_proj")
    return hasattr(config, "_attn_implementation") and all(isinstance(getattr(module, name, None), nn.Linear) for name in projections)


def _install_transformers(attention: nn.Module, tap: _Tap, stack: ExitStack) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_HF_INTERFACE, _transformers_attention)  # idempotent: one global name
    # a private config, so only this module routes through our function and the model keeps its setting
    private: Any = copy.deepcopy(attention.config)
    private._attn_implementation = _HF_INTERFACE
    _switch_attribute(stack, attention, "config", private)


def _transformers_attention(module: nn.Module, query_bhqe: torch.Tensor, key_bhke: torch.Tensor, value_bhke: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention, with the probabilities passed through the module's tap."""
    tap = _OPEN_TAPS[module]
    unread = [name for name in _HF_UNREAD if kwargs.get(name) is not None]
    if unread:
        raise LayerError(f"the attention of {tap.where} uses {', '.join(unread)}, which traitlens does not read")
    groups = query_bhqe.shape[1] // key_bhke.shape[1]  # grouped-query attention shares key/value heads
    key_bhke, value_bhke = key_bhke.repeat_interleave(groups, dim=1), value_bhke.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query_bhqe.shape[-1] ** -0.5
    scores_bhqk = query_bhqe @ key_bhke.transpose(-2, -1) * scale
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
    scores_bhqk = scores_bhqk + _transformers_mask(attention_mask, scores_bhqk, is_causal)
    weights_bhqk = tap(scores_bhqk.softmax(dim=-1, dtype=torch.float32).to(query_bhqe.dtype))
    mixed_bhqe = F.dropout(weights_bhqk, dropout, module.training) @ value_bhke
    return mixed_bhqe.transpose(1, 2).contiguous(), weights_bhqk


def _transformers_mask(attention_mask: torch.Tensor | None, scores_bhqk: torch.Tensor, is_causal: bool) -> torch.Tensor | float:
    """The additive mask transformers meant: boolean masks (made for sdpa) mark what is kept; with
    no mask, a causal module attends to earlier tokens only."""
    q, k = scores_bhqk.shape[-2:]
    if attention_mask is not None:
        return _additive(attention_mask[..., :k], scores_bhqk, left_out=False)
    if is_causal and q > 1:
        later_qk = torch.ones(q, k, dtype=torch.bool, device=scores_bhqk.device).triu(1)
        return _additive(later_qk, scores_bhqk, left_out=True)
    return 0.0


_KINDS = (
    _Kind("timm Attention", _is_timm, _install_timm),
    _Kind("torch MultiheadAttention", _is_mha, _install_mha),
    _Kind("transformers ViT self-attention", _is_transformers, _install_transformers),
)
