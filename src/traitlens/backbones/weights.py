"""Loading weights from local files, and turning hub failures into one helpful line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from traitlens.backbones.spec import LoadRequest
from traitlens.errors import SpecError, TraitlensError, WeightsUnavailableError

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
        raise WeightsUnavailableError(f"cannot read weights file {path}: {_first_line(error)}") from error
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def build_model(request: LoadRequest, tried: str, create: Callable[[bool], T]) -> T:
    """Build through ``create(pretrained)``: from a local file, the provider's pretrained source,
    or random init with a fixed seed. Failures to obtain weights or configs (no hub) become one
    line naming the spec, what was tried, and what the user can do instead; a constructor that
    rejects the spec's options is a :class:`SpecError`. The model is returned in eval mode."""
    try:
        if request.weights is not None:
            with fixed_seed():
                model = create(False)
            assert isinstance(model, nn.Module)
            load_into(model, read_state_dict(request.weights), request.weights, request.spec.text)
        elif request.pretrained:
            model = create(True)
        else:
            with fixed_seed():
                model = create(False)
    except TraitlensError:
        raise
    except TypeError as error:
        if request.spec.options:  # e.g. "unexpected keyword argument": the options are at fault
            raise SpecError(
                f"model spec {request.spec.text!r}: building the model with options "
                f"{sorted(request.spec.options)} failed ({_first_line(error)})"
            ) from error
        raise _unavailable(request, tried, error) from error
    except Exception as error:
        raise _unavailable(request, tried, error) from error
    # Built models come in training mode; one probing forward in it would move BatchNorm
    # statistics away from the loaded weights and apply dropout.
    assert isinstance(model, nn.Module)
    model.eval()
    return model


def _unavailable(request: LoadRequest, tried: str, error: Exception) -> WeightsUnavailableError:
    what = "pretrained weights" if request.pretrained and request.weights is None else "the model"
    return WeightsUnavailableError(
        f"could not load {what} for {request.spec.text!r} (tried {tried}: {_first_line(error)}); "
        "pass --weights PATH to load a local file, or --random-init for random weights"
    )
