"""Model families: how each architecture loads, prompts, encodes training
examples, and turns generated ids back into captions.

A family is one module in this package that defines a :class:`Family` subclass
decorated with :func:`register`. Modules are discovered on first lookup, so a
new family is one new file and nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from captioning.errors import UserError
from captioning.families.base import Family

_REGISTRY: dict[str, type[Family]] = {}
_discovered = False


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available under its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"two families are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _discovered = True


def family_names() -> list[str]:
    """Names of every registered family."""
    _discover()
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    """The family registered as ``name`` (an instance)."""
    _discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown model family {name!r}: choose one of {', '.join(family_names())}")
    return _REGISTRY[name]()


def family_for_config(config) -> Family:
    """Pick the family for a transformers config by its ``model_type``.

    Families claim model types explicitly; anything else goes to ``generic``,
    which handles any AutoModelForImageTextToText model with a chat template.
    """
    _discover()
    model_type = getattr(config, "model_type", None)
    for cls in _REGISTRY.values():
        if model_type in cls.model_types:
            return cls()
    return get_family("generic")


__all__ = ["Family", "register", "get_family", "family_for_config", "family_names"]
