"""The one place an entry point turns a user's mistake into a message.

Every command (eval/run.py, training.train, release, captioning.caption, captioning.factory,
captioning.shapes, space/app.py) runs its work through :func:`guarded`:

- a :class:`~captioning.errors.UserError`, or an ``OSError`` about a path (permission denied,
  read-only place, a file where a folder must be, no space left, a name too long) becomes
  one line ``error: ...`` on stderr and exit code 2;
- Ctrl-C becomes ``interrupted`` and exit code 130 (long runs keep their journal or
  checkpoints and resume);
- ``--debug``, anywhere on the command line of any entry point, shows the traceback instead.

Anything else is a bug of the toolkit and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from captioning.errors import UserError

DEBUG_FLAG = "--debug"


_OS_REASONS = {
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a file stands where a folder must be", errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder", errno.ENAMETOOLONG: "name too long", errno.EEXIST: "already exists",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``error: PROG: ...``) and exit code 2 like
    every other error, instead of the usage text plus a message."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (an untrained model's BEL or
    ESC, a tab that would break the tab-separated output) shown escaped, as Python writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(message).split())


def user_message(exc: BaseException) -> str | None:
    """The message to show for ``exc`` when a user can fix it, else None (a bug: traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _OS_REASONS and (exc.filename or exc.errno == errno.ENOSPC):
        where = f"{exc.filename}: " if exc.filename else ""
        advice = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EACCES: "pick a place you "
                  "can write to", errno.EPERM: "pick a place you can write to", errno.EROFS: "pick a place you can "
                  "write to"}.get(exc.errno, "pick another path")
        return f"{where}{_OS_REASONS[exc.errno]}; {advice}"
    return None


def pop_debug(argv: Sequence[str] | None) -> tuple[list[str], bool]:
    """(``argv`` without ``--debug``, whether it was there); argv None means sys.argv[1:]."""
    args = list(sys.argv[1:] if argv is None else argv)
    return [a for a in args if a != DEBUG_FLAG], DEBUG_FLAG in args


def quiet_third_party() -> None:
    """Keep library noise that says nothing a user can act on off the terminal:

    - importing bitsandbytes (peft and transformers do, whether or not anything is quantized)
      on a CPU with AVX512-BF16 asks the Hub for an optional 4-bit CPU kernel; offline that
      fails with two warnings on every command, and bitsandbytes falls back to its own kernel;
    - peft calls a transformers method that transformers 5 deprecates;
    - where torchao is installed, transformers imports it, and on a CPU machine it warns that its
      CUDA-only kernel libraries do not load and torch warns about two enums it registers.

    Only those loggers and that one warning; called by :func:`guarded`, so importing this
    module changes nothing."""
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def guarded(body: Callable[[], int | None], *, debug: bool = False, prefix: str = "") -> int:
    """Run ``body`` and return its exit code (None counts as 0); a user's mistake is one line
    on stderr and code 2, Ctrl-C code 130. ``prefix`` goes before the message."""
    quiet_third_party()
    try:
        rc = body()
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None or debug:
            raise
        print(f"error: {prefix}{one_line(message)}", file=sys.stderr)
        return 2
    return 0 if rc is None else int(rc)


def positive_int(text: str) -> int:
    """argparse ``type``: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


#: --quantize values every loading command shares: "none" (the default) and "int8" (captioning.loading)
QUANTIZE_CHOICES = ("none", "int8")


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
