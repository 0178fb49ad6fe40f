"""Model spec strings: ``PROVIDER:NAME[?key=value&...]`` and the registry of providers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlens.errors import SpecError


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec. ``options`` are keyword arguments for the provider's model constructor."""

    provider: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class LoadRequest:
    spec: ModelSpec
    weights: Path | None
    pretrained: bool


# Python spellings of the JSON literals: left as text, ``False`` would be a truthy string.
_PYTHON_LITERALS: dict[str, Any] = {"True": True, "False": False, "None": None}


def _option_value(text: str) -> Any:
    """``8`` -> 8, ``0.5`` -> 0.5, ``true``/``True`` -> True, ``null``/``None`` -> None,
    ``[1,2]`` -> [1, 2]; anything else stays text."""
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_spec(text: str) -> ModelSpec:
    provider, sep, rest = text.partition(":")
    if not sep or not provider or not rest:
        raise SpecError(f"model spec {text!r} is not PROVIDER:NAME; providers: {', '.join(sorted(PROVIDERS))}")
    if provider not in PROVIDERS:
        raise SpecError(f"unknown model provider {provider!r} in {text!r}; providers: {', '.join(sorted(PROVIDERS))}")
    name, _, query = rest.partition("?")
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise SpecError(f"model spec option {pair!r} in {text!r} is not key=value")
        options[key] = _option_value(value)
    return ModelSpec(provider=provider, name=name, options=options, text=text)


# Providers register themselves on import (see ``traitlens.backbones.__init__``); each maps a
# request to a Backbone. Kept as a plain dict so a plug-in can add one.
PROVIDERS: dict[str, Callable[[LoadRequest], Any]] = {}


def register_provider(prefix: str) -> Callable[[Callable[[LoadRequest], Any]], Callable[[LoadRequest], Any]]:
    def decorate(loader: Callable[[LoadRequest], Any]) -> Callable[[LoadRequest], Any]:
        PROVIDERS[prefix] = loader
        return loader

    return decorate
