"""A saved train_config.yaml read against the types training.config declares: the typed view
of the record for the stages that only read it (the card), so a damaged value is refused in
one line instead of shown as recorded. Settings the config does not declare (another
version's) are left alone; a missing one stays "not recorded"."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from training.config import TrainConfig


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` (parsed YAML) is of declared type ``hint``; a number where text is
    declared counts as text (``name: 2024``)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _number(value)
    if hint is str:
        return isinstance(value, str) or _number(value)
    if origin is list:
        return isinstance(value, list) and all(fits(typing.get_args(hint)[0], v) for v in value)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return isinstance(value, dict) and all(k in hints and fits(hints[k], v) for k, v in value.items())
    return True


def _name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))


def recorded_problem(doc: dict[str, Any]) -> str | None:
    """The first recorded setting whose value is not of its declared type, in words
    (``optim.learning_rate is str 'fast', not float``); None when every one fits."""
    sections = typing.get_type_hints(TrainConfig)
    for section, values in doc.items():
        hint = sections.get(section)
        if not (dataclasses.is_dataclass(hint) and isinstance(values, dict)):
            continue
        keys = typing.get_type_hints(hint)
        for key, value in values.items():
            if key in keys and not fits(keys[key], value):
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                return f"{section}.{key} is {type(value).__name__} {shown}, not {_name(keys[key])}"
    return None
