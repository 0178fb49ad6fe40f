"""Model spec strings: ``PROVIDER:NAME[?key=value&...]`` and the registry of providers.

Options are allow-listed per provider: each provider declares the option names it accepts and what
values each takes (:class:`OptionType`), and :func:`parse_spec` refuses anything else. Options
reach a model library's constructor as keyword arguments, and those constructors also take
arguments that load files (``checkpoint_path``, ``pretrained_cfg_overlay``, ``cache_dir``) or turn
safe loading off (``weights_only=False``, ``trust_remote_code``): no spec may name those.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from traitlens.errors import SpecError

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class OptionType:
    """The values one spec option accepts: ``describe`` says which in errors; ``fields`` makes it a
    JSON object whose keys are allow-listed too (open_clip's ``vision_cfg``)."""

    describe: str
    accepts: Callable[[Any], bool] = lambda _value: False
    fields: Mapping[str, OptionType] | None = None


# Larger numbers are no model's size; the cap also keeps huge JSON integers from overflowing floats.
_MAX_NUMBER = 2**20


def _is_int(value: Any, low: int) -> bool:
    # JSON ``true`` is not the number 1
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX_NUMBER


COUNT = OptionType(f"an integer from 0 to {_MAX_NUMBER}", lambda value: _is_int(value, 0))
POSITIVE = OptionType(f"an integer from 1 to {_MAX_NUMBER}", lambda value: _is_int(value, 1))
NUMBER = OptionType(f"a number from 0 to {_MAX_NUMBER}",
                    lambda value: _is_int(value, 0) or (isinstance(value, float) and 0 <= value <= _MAX_NUMBER))
BOOLEAN = OptionType("true or false", lambda value: isinstance(value, bool))
SIZE = OptionType("an image size: an integer or [height, width]", lambda value: POSITIVE.accepts(value) or (
    isinstance(value, list) and len(value) == 2 and all(POSITIVE.accepts(item) for item in value)))
COUNTS = OptionType("an integer or a list of integers", lambda value: COUNT.accepts(value) or (
    isinstance(value, list) and 0 < len(value) <= 16 and all(COUNT.accepts(item) for item in value)))
# A registry name (a timm model, an activation): never a path, a URL or a ``hf-hub:`` schema.
NAME = OptionType("a name of letters, digits, '_', '.' or '-'",
                  lambda value: isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", value) is not None)


def one_of(*choices: str) -> OptionType:
    return OptionType(f"one of {', '.join(repr(choice) for choice in choices)}", lambda value: value in choices)


def json_object(**fields: OptionType) -> OptionType:
    return OptionType("a JSON object", fields=fields)


def shorten(text: str, limit: int = 100) -> str:
    """``text`` cut to ``limit`` characters for an error line (a spec can be a page of JSON)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _option_problem(name: str, value: Any, kind: OptionType) -> str | None:
    """What is wrong with ``name=value`` for ``kind``, in words; None when it is fine."""
    if kind.fields is None and kind.accepts(value):
        return None
    if kind.fields is None or not isinstance(value, dict):
        return f"option {name} must be {kind.describe}, got {shorten(_json_text(value), 40)}"
    for key, item in value.items():
        if key not in kind.fields:
            return f"option {name} has no field {shorten(key, 40)!r} (allowed: {', '.join(sorted(kind.fields))})"
        problem = _option_problem(f"{name}.{key}", item, kind.fields[key])
        if problem is not None:
            return problem
    return None


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except RecursionError:
        return "deeply nested JSON"


# Python spellings of the JSON literals: left as text, ``False`` would be a truthy string.
_PYTHON_LITERALS: dict[str, Any] = {"True": True, "False": False, "None": None}


def _option_value(text: str) -> Any:
    """``8`` -> 8, ``0.5`` -> 0.5, ``true``/``True`` -> True, ``null``/``None`` -> None,
    ``[1,2]`` -> [1, 2]; anything else stays text."""
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: thousands of nested brackets
        return text


def parse_spec(text: str) -> ModelSpec:
    """Parse ``text`` and check its options against the provider's allow-list (one-line SpecError)."""
    provider, sep, rest = text.partition(":")
    shown = repr(shorten(text))
    providers = registered_providers()
    if not sep or not provider or not rest:
        raise SpecError(f"model spec {shown} is not PROVIDER:NAME; providers: {', '.join(sorted(providers))}")
    if provider not in providers:
        raise SpecError(f"unknown model provider {shorten(provider, 40)!r} in {shown}; "
                        f"providers: {', '.join(sorted(providers))}")
    name, _, query = rest.partition("?")
    allowed = providers[provider].options
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise SpecError(f"model spec option {shorten(pair, 40)!r} in {shown} is not key=value")
        if key in options:
            raise SpecError(f"model spec {shown} gives option {key!r} twice")
        if key not in allowed:
            choices = f"allowed: {', '.join(sorted(allowed))}" if allowed else "they take none"
            raise SpecError(f"model spec {shown}: {provider} models take no option {shorten(key, 40)!r} ({choices})")
        options[key] = _option_value(value)
        problem = _option_problem(key, options[key], allowed[key])
        if problem is not None:
            raise SpecError(f"model spec {shown}: {problem}")
    return ModelSpec(provider=provider, name=name, options=options, text=text)


@dataclass(frozen=True)
class Provider:
    """How a provider builds a Backbone from a request, and the spec options it accepts."""

    load: Callable[[LoadRequest], Any]
    options: Mapping[str, OptionType]


# The built-in providers register themselves on import (see ``traitlens.backbones.__init__``);
# other packages declare theirs under this entry-point group, loaded on first use.
PROVIDERS: dict[str, Provider] = {}
PLUGIN_GROUP = "traitlens.backbones"
SHIPPED_PLUGINS = {"traitlens": "traitlens.specimens.provider"}
"""This package's own plug-ins, imported by name when its metadata is missing (a source tree on
PYTHONPATH, a stale editable install): the default model must load whatever the install."""


@cache
def _load_plugins() -> None:
    """Import, once, the provider modules installed packages declare under :data:`PLUGIN_GROUP`,
    then this package's own where its metadata did not declare them."""
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as error:  # a third party's import error: any type
            log.warning("model provider plug-in %s (%s) did not load: %s", entry.name, entry.value, error)
    for name, module in SHIPPED_PLUGINS.items():
        if name not in PROVIDERS:
            importlib.import_module(module)


def registered_providers() -> dict[str, Provider]:
    """Every provider: the built-in ones and, loaded once, those of installed packages' entry points
    (``[project.entry-points."traitlens.backbones"]``); a plug-in that fails to import is skipped
    with a warning, so it cannot break the others."""
    _load_plugins()
    return PROVIDERS


def register_provider(prefix: str, options: Mapping[str, OptionType] | None = None,
                      ) -> Callable[[Callable[[LoadRequest], Any]], Callable[[LoadRequest], Any]]:
    """Register the decorated loader for ``prefix:`` specs, accepting only ``options``."""

    def decorate(loader: Callable[[LoadRequest], Any]) -> Callable[[LoadRequest], Any]:
        if prefix in PROVIDERS and PROVIDERS[prefix].load is not loader:
            log.warning("model provider %r is registered again; the later one (%s.%s) replaces it", prefix,
                        loader.__module__, loader.__qualname__)
        PROVIDERS[prefix] = Provider(loader, dict(options or {}))
        return loader

    return decorate
