"""Settings classes that are also command lines: a dataclass field declared with
:func:`option` is a flag (its help, type, default and group written once, on the field), and
:func:`add_options` / :func:`option_values` turn the class into argparse flags and back. Every
command that takes decoding settings (captioning.caption, eval/run.py generate) builds its
flags from captioning.generation.GenerationSettings this way, so a setting added there reaches
them all, the records and reproduce."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any


def positive_int(text: str) -> int:
    """argparse ``type``: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


#: the longest prompt any command takes (captioning, eval, training's data.prompt): an
#: instruction is a sentence or two; 100,000 characters ran the model over that many tokens for
#: most of a minute per image instead of being refused
MAX_PROMPT_CHARS = 2000



def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, group: str | None = None,
           **argparse_kw: Any) -> Any:
    """A dataclass field that is also a command-line flag, its help written here once.

    :func:`add_options` turns it into ``--the-name`` (``flag`` overrides the spelling); a bool
    is a switch (``--no-the-name`` when it defaults to True), ``bool | None`` gets both
    ``--x``/``--no-x``. ``group`` names the argument group; other keywords (``type``,
    ``choices``, ``nargs``, ``metavar``) go to ``add_argument``. No default: a required flag.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "group": group,
                                                        "argparse": argparse_kw})


def add_options(parser: argparse.ArgumentParser, cls: type, groups: dict[str, Any] | None = None) -> None:
    """Add one argument per :func:`option` field of dataclass ``cls``, in field order, to
    ``groups[its group]`` (else ``parser``); the parsed value lands under the field's name.

    Written here rather than taken from jsonargparse (which parses training's nested config):
    these commands' flags are flat kebab-case (``--batch-size``, ``--no-tokenize``), a
    spelling jsonargparse does not produce, and their users' scripts use them."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": meta["help"], **meta["argparse"]}
        name = "--" + f.name.replace("_", "-")
        base, optional = _plain_type(hints[f.name])
        if base is bool and optional:
            kw.update(action=argparse.BooleanOptionalAction, default=f.default)
        elif base is bool:
            kw.update(action="store_false" if f.default else "store_true")
            name = "--no-" + name[2:] if f.default else name
        else:
            kw.setdefault("type", base if base in (int, float) else str)
            if f.default is dataclasses.MISSING:
                kw["required"] = True
            else:
                kw["default"] = f.default
        (groups or {}).get(meta["group"], parser).add_argument(meta["flag"] or name, **kw)


def option_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of ``cls``'s :func:`option` fields by field name, ready for ``cls(**...)``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}


def _plain_type(hint: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether None was allowed): ``int | None`` -> (int, True)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), len(rest) < len(typing.get_args(hint))
    return hint, False


def same_as(cls: type, name: str, **changes: Any) -> Any:
    """Field ``name`` of dataclass ``cls`` declared again for another settings class: the same
    default, help and flag (``changes`` overrides some), so a setting two commands share (push
    merges like merge does) is written once."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = dict(f.metadata)
    default = changes.pop("default", f.default)
    for key in ("help", "flag", "group"):
        if key in changes:
            meta[key] = changes.pop(key)
    meta["argparse"] = {**meta.get("argparse", {}), **changes}
    return dataclasses.field(default=default, metadata=meta)


def click_options(cls: type, types: dict[str, Any] | None = None):
    """A decorator adding one click option per :func:`option` field of dataclass ``cls`` (the
    release command's counterpart of :func:`add_options`; its commands are click's): the
    value reaches the command under the field's name, ready for ``cls(**kwargs)``. ``types``
    maps a field to its click type; otherwise a path field takes ``types["Path"]``, text
    ``types["str"]``, a ``choices`` option a ``click.Choice``, a list comma-separated text."""
    import click

    types = types or {}
    hints = typing.get_type_hints(cls)

    def decorate(command):
        for f in reversed([f for f in dataclasses.fields(cls) if "help" in f.metadata]):
            meta, extra = f.metadata, dict(f.metadata.get("argparse", {}))
            base, _ = _plain_type(hints[f.name])
            name = meta["flag"] or "--" + f.name.replace("_", "-")
            kw: dict[str, Any] = {"help": meta["help"]}
            if base is bool:
                kw["is_flag"] = True
            else:
                listed = typing.get_origin(base) is list
                kw["type"] = types.get(f.name) or (click.Choice(extra["choices"]) if "choices" in extra else
                                                   types.get("Path") if base is Path else
                                                   base if base in (int, float) else types.get("str"))
                if listed:  # "a,b" -> ["a", "b"]; "" -> []
                    kw["callback"] = lambda ctx, param, value: None if value is None else value.split(",")
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    kw["required"] = True
                elif f.default is not dataclasses.MISSING and f.default is not None:
                    kw.update(default=f.default, show_default=True)
            command = click.option(name, f.name, **kw)(command)
        return command

    return decorate


def field_value(cls: type, name: str, value: Any) -> Any:
    """``value`` as field ``name`` of dataclass ``cls`` takes it: text (from an environment
    variable or a ``key=value`` list) converted to the field's int, float or bool, ``none``
    to None where None is allowed; a value already typed is returned as it is. A UserError
    names the field when the text does not convert."""
    from captioning.errors import UserError

    if not isinstance(value, str):
        return value
    base, optional = _plain_type(typing.get_type_hints(cls)[name])
    text = value.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if base is bool:
        if text.lower() in ("true", "1", "yes", "false", "0", "no"):
            return text.lower() in ("true", "1", "yes")
        raise UserError(f"{name} must be true or false, got {value!r}")
    if base in (int, float):
        try:
            return base(text)
        except ValueError:
            kind = "a whole number" if base is int else "a number"
            raise UserError(f"{name} must be {kind}, got {value!r}") from None
    return text
