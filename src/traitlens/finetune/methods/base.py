"""What a fine-tuning method is: how it changes a model (modules of its own, added in place) and
which of the changed model's parameters it trains. Every method also trains the classifier, as
the parameter-efficient transfer learning literature does.

A method is one module of this package that subclasses :class:`FinetuneMethod` and registers it
with :func:`register_method`; ``finetune --method`` lists the registry.
"""

from __future__ import annotations

from typing import Any, ClassVar

from traitlens.backbones import Backbone
from traitlens.checks import check_int
from traitlens.cli_args import option_name
from traitlens.finetune.errors import FinetuneError


class FinetuneMethod:
    name: ClassVar[str]
    summary: ClassVar[str]
    """One line for ``finetune --method``'s help."""
    defaults: ClassVar[dict[str, int]] = {}
    """The method's own settings (whole numbers) and their defaults; ``finetune`` takes them as options."""

    def __init__(self, settings: dict[str, Any]) -> None:
        foreign = sorted(set(settings) - set(self.defaults))
        if foreign:
            accepted = ", ".join(option_name(name) for name in self.defaults) or "none"
            raise FinetuneError(f"{', '.join(option_name(name) for name in foreign)} does not apply to --method {self.name} "
                                f"(its own options: {accepted})")
        self.settings = self.defaults | settings
        for name, value in self.settings.items():
            check_int(value, option_name(name), FinetuneError)

    def prepare(self, backbone: Backbone) -> None:
        """Add the method's own modules to ``backbone.model`` (initialized from torch's current
        random state: the caller fixes the seed); nothing for a method that trains existing weights.
        A model the method cannot apply to is one FinetuneError line."""

    def trains(self, name: str) -> bool:
        """Whether the prepared model's parameter ``name`` is trained (the classifier's always is)."""
        raise NotImplementedError


_METHODS: dict[str, type[FinetuneMethod]] = {}


def register_method(method: type[FinetuneMethod]) -> type[FinetuneMethod]:
    _METHODS[method.name] = method
    return method


def finetune_methods() -> dict[str, type[FinetuneMethod]]:
    from traitlens.finetune.methods import adapter, lora, prompts, selection  # noqa: F401  (they register)

    return dict(_METHODS)


def finetune_method(name: str, settings: dict[str, Any]) -> FinetuneMethod:
    methods = finetune_methods()
    if name not in methods:
        raise FinetuneError(f"unknown fine-tuning method {name!r}; choose one of {', '.join(methods)}")
    return methods[name](settings)
