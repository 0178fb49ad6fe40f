"""Reading a head kind's settings (from ``head.json`` or the command line): every value checked,
so a damaged file is one line, never a TypeError deep inside a module's constructor."""

from __future__ import annotations

from typing import Any

from traitlens.heads.errors import HeadError


def int_setting(settings: dict[str, Any], key: str, default: int | None = None, minimum: int = 1) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HeadError(f"head setting {key} must be an integer of at least {minimum}, got {value!r}")
    return value


def choice_setting(settings: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = settings.get(key, default)
    if value not in choices:
        raise HeadError(f"head setting {key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)
