"""The one interface every model is seen through: layers of tokens, captured or edited by hooks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from traitlens.backbones.codecs import TokenCodec
from traitlens.backbones.layout import TokenLayout
from traitlens.backbones.preprocess import Preprocess
from traitlens.errors import LayerError

TokenEdit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """One readable and editable point of a model."""

    name: str
    module: nn.Module = field(repr=False)
    codec: TokenCodec = field(repr=False)
    layout: TokenLayout
    width: int


def _as_list(layers: str | int | Sequence[str | int]) -> list[str | int]:
    """A single layer name or index, or several."""
    return [layers] if isinstance(layers, str | int) else list(layers)


class _StopForward(Exception):
    """Raised from a hook to skip the layers after the last one a caller needs."""


@dataclass(frozen=True)
class TextTower:
    """What a CLIP-style model adds to its image side (a capability a provider gives its Backbone)."""

    embed: Callable[[Sequence[str]], torch.Tensor]
    """Prompts to (n, e) unit-norm text embeddings, without gradients."""
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(b, e) unit-norm image embeddings and (c, e) text embeddings to (b, c) logits, the model's own."""


@dataclass(frozen=True)
class ClassAttention:
    """What a class-query head (Prompt-CAM, INTR) adds: each class has its own query, and where
    that query attends over the patches of ``layer`` is the class's map (a capability a head
    gives the Backbone it returns)."""

    kind: str
    """The head's kind (``prompt-cam``, ``intr``): the explain method that reads it."""
    layer: str
    """The layer whose patch grid the attention covers."""
    attend: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    """Pixels (b, 3, h, w) to the logits (b, classes) and every class query's attention over the
    patches, per attention head (b, heads, classes, patches)."""
    blurred_logits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    """Pixels (b, 3, h, w), target classes (b,) and a (b, heads) bool mask to the logits when the
    masked heads' attention of each target query is made uniform (Prompt-CAM's head blurring)."""


class Backbone:
    """A vision model seen as a sequence of token layers.

    ``forward`` maps preprocessed pixels (b, 3, h, w) to the model's head output (class logits when
    it has a classifier, else its image embedding). ``capture`` and ``edit`` reach any layer in
    ``layer_names`` through hooks that are removed when the ``with`` block ends, errors included.
    ``text_tower`` is set for CLIP-style models (text heads need it), ``class_attention`` for a
    class-query head's output (Prompt-CAM and INTR maps need it).
    """

    def __init__(
        self,
        spec: str,
        model: nn.Module,
        layers: Sequence[Layer],
        preprocess: Preprocess,
        forward_fn: Callable[[torch.Tensor], torch.Tensor],
        class_names: Sequence[str] | None = None,
        text_tower: TextTower | None = None,
        class_attention: ClassAttention | None = None,
    ) -> None:
        if not layers:
            raise LayerError(f"no layer of {spec} yields token sequences or feature maps")
        self.spec = spec
        self.model = model.eval()
        self.preprocess = preprocess
        self.class_names = list(class_names) if class_names is not None else None
        self._layers = {layer.name: layer for layer in layers}
        self._order = {layer.name: index for index, layer in enumerate(layers)}
        self._forward_fn = forward_fn
        self.text_tower = text_tower
        self.class_attention = class_attention
        self._fingerprint: str | None = None
        self._head_modules: tuple[nn.Module, ...] = ()
        """Modules of the heads put on top (:meth:`with_forward`): they move with the model."""

    def with_forward(self, forward_fn: Callable[[torch.Tensor], torch.Tensor], class_names: Sequence[str] | None,
                     last_layer: str | None = None, class_attention: ClassAttention | None = None,
                     head_module: nn.Module | None = None) -> Backbone:
        """The same model, layers (up to ``last_layer``, when a head stops there) and preprocessing
        with another head: ``forward_fn`` and its ``class_names`` (and its ``class_attention``,
        for a class-query head). ``head_module``, the head's own weights, moves with the model
        (:meth:`to`). The weights fingerprint is shared."""
        names = self.layer_names
        kept = names if last_layer is None else names[: names.index(last_layer) + 1]
        other = Backbone(self.spec, self.model, [self._layers[name] for name in kept], self.preprocess, forward_fn, class_names,
                         self.text_tower, class_attention)
        other._fingerprint = self._fingerprint
        other._head_modules = self._head_modules + ((head_module,) if head_module is not None else ())
        return other

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Backbone:
        self.model.to(device)
        for module in self._head_modules:
            module.to(device)
        return self

    def layer(self, key: str | int) -> Layer:
        """A layer by module name or block index (negative counts from the end)."""
        return self._layers[self.resolve_layer(key)]

    def resolve_layer(self, key: str | int) -> str:
        names = self.layer_names
        text = str(key).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if -len(names) <= index < len(names):
                return names[index]
        elif text in self._layers:
            return text
        raise LayerError(
            f"unknown layer {text!r} for {self.spec}; valid layers are indices "
            f"-{len(names)}..{len(names) - 1} or names: {', '.join(names)}"
        )

    def resolve_layers(self, keys: Sequence[str | int]) -> list[str]:
        """Resolve, de-duplicate and sort layers into forward order."""
        resolved = {self.resolve_layer(key) for key in keys}
        return sorted(resolved, key=self._order.__getitem__)

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return self._forward_fn(pixels_bchw)

    @contextmanager
    def capture(
        self, layers: str | int | Sequence[str | int], *, detach: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, each forward fills the yielded dict with ``tokens_btd`` per layer,
        keyed by layer name (layers may be given by name or index).

        With ``detach=False`` the captured tensors stay in the autograd graph and the rest of the
        model reads exactly them, so their gradients are the layer's gradients (for gradient maps;
        a codec that rearranges a feature map would otherwise leave them a dead side branch).
        Hooks run in the order they were registered: a capture opened inside an ``edit`` block on
        the same layer sees the edited tokens, one opened outside it sees the original tokens.
        """
        captured: dict[str, torch.Tensor] = {}
        with ExitStack() as stack:
            for name in self.resolve_layers(_as_list(layers)):
                layer = self.layer(name)

                def hook(_module: nn.Module, _inputs: Any, output: Any, layer: Layer = layer) -> Any:
                    tokens_btd = layer.codec.to_tokens(output)
                    if detach:
                        captured[layer.name] = tokens_btd.detach()
                        return None
                    captured[layer.name] = tokens_btd
                    return layer.codec.from_tokens(tokens_btd, like=output)

                stack.callback(layer.module.register_forward_hook(hook).remove)
            yield captured

    @contextmanager
    def edit(self, layer_name: str | int, edit_fn: TokenEdit) -> Iterator[None]:
        """Within the block, the layer's output is replaced by ``edit_fn(tokens_btd)``, which must
        return a tensor of the same (b, t, d) shape."""
        layer = self.layer(layer_name)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            tokens_btd = layer.codec.to_tokens(output)
            edited_btd = edit_fn(tokens_btd)
            if not isinstance(edited_btd, torch.Tensor) or edited_btd.shape != tokens_btd.shape:
                got = tuple(edited_btd.shape) if isinstance(edited_btd, torch.Tensor) else type(edited_btd).__name__
                raise LayerError(
                    f"an edit of {layer.name} must return tokens of shape {tuple(tokens_btd.shape)}, got {got}"
                )
            return layer.codec.from_tokens(edited_btd, like=output)

        handle = layer.module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @torch.inference_mode()
    def tokens(
        self, pixels_bchw: torch.Tensor, layers: str | int | Sequence[str | int]
    ) -> dict[str, torch.Tensor]:
        """``tokens_btd`` (b, t, d) at each of ``layers`` keyed by layer name, running the model
        only as deep as the last of them."""
        names = self.resolve_layers(_as_list(layers))
        if not names:
            raise LayerError(f"no layers requested from {self.spec}")
        with self.capture(names) as captured:
            self.run_until(pixels_bchw, names[-1])
        return captured

    def run_until(self, pixels_bchw: torch.Tensor, layer_name: str | int) -> None:
        """Run the model on ``pixels_bchw`` and stop right after ``layer_name``: for hooks (captures,
        edits) that need nothing later. Grad mode is the caller's."""
        layer = self.layer(layer_name)

        def stop(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            raise _StopForward

        # registered after the caller's hooks on the same layer, so those run before the stop
        handle = layer.module.register_forward_hook(stop)
        try:
            self.forward(pixels_bchw)
        except _StopForward:
            pass
        finally:
            handle.remove()

    def weights_changed(self) -> None:
        """Forget the cached fingerprint: the weights were changed in place (a fine-tuned model)."""
        self._fingerprint = None

    def weights_fingerprint(self) -> str:
        """SHA-256 over parameter and buffer names, shapes, dtypes and bytes (cached)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "weights_fingerprint": self.weights_fingerprint(),
            "preprocess": self.preprocess.to_dict(),
            "layers": {name: {"width": layer.width, "layout": layer.layout.to_dict()} for name, layer in self._layers.items()},
        }
