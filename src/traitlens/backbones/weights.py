"""Loading weights from local files, and turning hub failures into one helpful line.

No file is ever unpickled: our own reader uses safetensors or ``torch.load(weights_only=True)``,
and while a model library builds a model every ``torch.load`` it makes is forced to do the same
(:func:`weights_only_loads`). When the Hugging Face hub cannot be reached, libraries read their
cache only (:func:`hub_offline_when_unreachable`) instead of retrying for a minute.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import torch
from torch import nn

from traitlens.backbones.spec import LoadRequest, shorten
from traitlens.errors import SpecError, TraitlensError, WeightsUnavailableError, first_line

T = TypeVar("T")

_NESTED_KEYS = ("state_dict", "model", "module", "model_state_dict")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or a torch file read with ``weights_only=True`` (no pickle)."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any parse failure is a bad file for the user
        raise WeightsUnavailableError(f"cannot read weights file {path}: {first_line(error)}") from error
    for key in _NESTED_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsUnavailableError(f"weights file {path} does not hold a state dict of tensors")
    return loaded


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, spec: str) -> None:
    """Load strictly; on mismatch say how many keys are missing, unexpected or of the wrong shape,
    with examples, in one line."""
    state_dict = _strip_prefix(state_dict, model)
    own = model.state_dict()
    wrong_shapes = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in state_dict.items()
        if key in own and value.shape != own[key].shape
    ]
    if wrong_shapes:
        raise WeightsUnavailableError(
            f"weights {path} do not fit {spec}: {len(wrong_shapes)} tensors have the wrong shape "
            f"(file vs model), e.g. {wrong_shapes[:3]}"
        )
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"weights {path} do not fit {spec}: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:3]}, {len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
        )


def _strip_prefix(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix such as ``module.`` (DDP) when the model's own keys lack it."""
    own = set(model.state_dict())
    for prefix in ("module.", "model."):
        if not own & set(state_dict) and all(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


@contextmanager
def fixed_seed(seed: int = 0) -> Iterator[None]:
    """Random-init weights are the same on every run, so stores and resumes stay reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside, every ``torch.load`` reads tensors only, whatever its caller passes: torch honours
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` over an explicit ``weights_only=False`` (which torchvision's
    download cache reader passes), so no file a library opens (a cache, a local directory) runs code."""
    saved = {name: os.environ.get(name) for name in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(_FORCE_NO_WEIGHTS_ONLY, None)  # torch refuses to load when both are set
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


PROBE_TIMEOUT_S = 3.0


@cache
def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def reachable(url: str) -> bool:
    """Whether a connection to ``url``'s host (or to the HTTPS proxy, when one is set) opens within
    a few seconds; asked once per host and process."""
    proxy = urllib.request.getproxies().get("https")
    target = urlsplit(proxy or url)
    if not target.hostname:
        return True  # nothing to probe: let the library try
    return _connects(target.hostname, target.port or (443 if target.scheme == "https" else 80))


@contextmanager
def hub_offline_when_unreachable() -> Iterator[bool]:
    """Inside, huggingface_hub (so timm, open_clip and transformers) reads its cache only when the
    hub cannot be reached: its requests would otherwise retry with back-off for about a minute and
    print a warning per try. Yields whether the hub is offline (``HF_HUB_OFFLINE`` or unreachable)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield True
        return
    if reachable(constants.ENDPOINT):
        yield False
        return
    constants.HF_HUB_OFFLINE = True  # read at each request, so this switches every library at once
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False


def build_model(request: LoadRequest, tried: str, create: Callable[[bool], T], hub: bool = True) -> T:
    """Build through ``create(pretrained)``: from a local file, the provider's pretrained source,
    or random init with a fixed seed. Failures to obtain weights or configs (no hub) become one
    line naming the spec, what was tried, and what the user can do instead; a constructor that
    rejects the spec's options is a :class:`SpecError`. The model is returned in eval mode.

    ``hub``: pretrained weights come from the Hugging Face hub, so they are read from its cache
    only when it cannot be reached (see :func:`hub_offline_when_unreachable`)."""
    offline = False
    try:
        if request.weights is not None:
            with fixed_seed():
                model = create(False)
            assert isinstance(model, nn.Module)
            load_into(model, read_state_dict(request.weights), request.weights, request.spec.text)
        elif request.pretrained:
            with hub_offline_when_unreachable() if hub else nullcontext(False) as offline:
                model = create(True)
        else:
            with fixed_seed():
                model = create(False)
    except TraitlensError:
        raise
    except TypeError as error:
        if request.spec.options:  # e.g. "unexpected keyword argument": the options are at fault
            raise SpecError(
                f"model spec {shorten(request.spec.text)!r}: building the model with options "
                f"{sorted(request.spec.options)} failed ({first_line(error)})"
            ) from error
        raise _unavailable(request, tried, error, offline) from error
    except Exception as error:
        raise _unavailable(request, tried, error, offline) from error
    # Built models come in training mode; one probing forward in it would move BatchNorm
    # statistics away from the loaded weights and apply dropout.
    assert isinstance(model, nn.Module)
    model.eval()
    return model


def _is_cache_miss(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, is huggingface_hub's "not in the cache"."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, LocalEntryNotFoundError | OfflineModeIsEnabled):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _unavailable(request: LoadRequest, tried: str, error: Exception, offline: bool = False) -> WeightsUnavailableError:
    what = "pretrained weights" if request.pretrained and request.weights is None else "the model"
    # offline, the libraries' own words for a cache miss ("set HF_HUB_OFFLINE=0") mislead
    detail = ("the hub is offline (HF_HUB_OFFLINE) or cannot be reached, and its local cache does not hold them"
              if offline and _is_cache_miss(error) else first_line(error))
    return WeightsUnavailableError(
        f"could not load {what} for {shorten(request.spec.text)!r} (tried {tried}: {detail}); "
        "pass --weights PATH to load a local file, or --random-init for random weights"
    )
