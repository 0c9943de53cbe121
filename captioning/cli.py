"""The one place an entry point turns a user's mistake into a message.

Every command (eval/run.py, training.train, release, captioning.caption, synthetic.factory,
synthetic.shapes, space/app.py) runs its work through :func:`guarded`:

- a failure classified by kind (:func:`user_message`: a :class:`~captioning.errors.UserError`;
  the disk: no space, read-only, permission, a name too long, a symlink loop; damaged
  weights, JSON, YAML or tokenizer files; memory; the network, offline vs missing) becomes one
  line ``error: ...`` on stderr naming the file or flag, and exit code 2;
- Ctrl-C becomes ``interrupted`` and exit code 130 (long runs keep their journal or
  checkpoints and resume);
- anything else is a bug of the toolkit: one line that says so, exit code 1;
- ``--debug``, anywhere on the command line of any entry point, shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from captioning.errors import UserError

DEBUG_FLAG = "--debug"


_OS_REASONS = {
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a file stands where a folder must be", errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder", errno.ENAMETOOLONG: "name too long", errno.EEXIST: "already exists",
    errno.ELOOP: "a loop of symbolic links", errno.EFBIG: "file too large for this file system or limit",
    errno.EIO: "input/output error (a failing disk or a damaged file system)", errno.ENXIO: "not a regular file",
    errno.EMFILE: "too many open files", errno.ENFILE: "too many open files", errno.ETXTBSY: "file busy",
    errno.ENOTEMPTY: "folder not empty", errno.EXDEV: "on another file system", errno.ENOMEM: "out of memory",
    errno.ENODEV: "not a regular file (a FIFO, device or folder)",
}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OS_ADVICE = {errno.ENOSPC: "free some space and run it again", errno.EDQUOT: "free some space and run it again",
              errno.EFBIG: "write it to another file system, or raise the limit (ulimit -f)",
              errno.EACCES: "pick a place you can write to", errno.EPERM: "pick a place you can write to",
              errno.EROFS: "pick a place you can write to", errno.ELOOP: "fix or remove the link",
              errno.EIO: "check the disk", errno.EMFILE: "raise the limit (ulimit -n)",
              errno.ENFILE: "raise the limit (ulimit -n)", errno.ENOMEM: "close other programs or use a "
              "machine with more memory"}

#: a library's own text inside a message is cut here: a damaged file can make it megabytes long
#: (a YAML alias bomb's value, a whole JSON document in a parse error)
MAX_DETAIL = 300
#: the longest line an error prints
MAX_MESSAGE = 1000


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``error: PROG: ...``) and exit code 2 like
    every other error, instead of the usage text plus a message."""

    #: options whose value may be empty text (a prompt of "" means "no prompt"); every other
    #: text value names a file, folder, model or choice, and "" would quietly mean "." (the
    #: current folder: `--out ""` once wrote a dataset into it)
    allow_empty = ("prompt",)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {cut(one_line(message))} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(ns, action.dest, None)
            values = value if isinstance(value, list) else [value]
            if action.dest not in self.allow_empty and any(isinstance(v, str) and not v.strip() for v in values):
                name = action.option_strings[0] if action.option_strings else action.dest
                self.error(f"argument {name}: empty value; pass a path, name or number")
        return ns, rest


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (an untrained model's BEL or
    ESC, a tab that would break the tab-separated output) shown escaped, as Python writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(message).split())


def cut(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` at most ``limit`` characters, its middle replaced by how much was left out."""
    if len(text) <= limit:
        return text
    keep = limit - 40
    return f"{text[:keep * 2 // 3]} ...[{len(text) - keep:,} characters]... {text[-(keep // 3):]}"


# ------------------------------------------------------------------ failures classified by kind
# One rule per kind of failure, wherever it is raised: the boundary below, the Space's handlers
# and its MCP tools all go through user_message. A kind that names no file finds it in the
# traceback (the innermost frame holding a path to an existing file of the right suffix), so
# call sites need not wrap every read.

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".txt", ".model", ".csv", ".jinja")


def _traceback_locals(exc: BaseException):
    """The local variables of every frame ``exc`` passed through, innermost frame first."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        yield from list(frame.f_locals.values())


def _file_in_traceback(exc: BaseException, suffixes: tuple[str, ...], inside: str | None = None,
                       confirm=None) -> str | None:
    """The file a failure was reading: the innermost frame's local variable that is a path
    to an existing file ending in one of ``suffixes`` (or a folder holding ``inside``), and,
    given ``confirm``, that really shows the failure (a frame can hold several paths)."""
    for value in _traceback_locals(exc):
        text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
        if not isinstance(text, str) or len(text) >= 4096:
            continue
        try:
            if text.lower().endswith(suffixes) and os.path.isfile(text) and (confirm is None or confirm(text)):
                return text
            if inside and os.path.isfile(os.path.join(text, inside)):
                return os.path.join(text, inside)
        except (OSError, ValueError):
            continue
    return None


def _not_utf8(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(64 * 2**20).decode("utf-8")
    except UnicodeDecodeError:
        return True
    except OSError:
        return False
    return False


def _not_json(path: str) -> bool:
    import json

    try:
        with open(path, encoding="utf-8-sig") as f:
            json.loads(f.read(64 * 2**20))
    except (ValueError, OSError):
        return True
    return False


def _raised_in(exc: BaseException, *packages: str) -> bool:
    """Whether ``exc`` was raised inside one of ``packages`` (its innermost Python frame)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return any(module == p or module.startswith(p + ".") for p in packages)


#: packages that read a model folder's files, and what they raise on a value they cannot use
_FILE_READERS = ("transformers", "peft", "tokenizers", "PIL")
_REJECTIONS = (TypeError, ValueError, KeyError, AttributeError, NotImplementedError, IndexError, RuntimeError)


def _model_in_traceback(exc: BaseException) -> str | None:
    """The model folder or id a failure was using: the innermost frame's local that is a
    folder holding config.json or adapter_config.json, or an object with such a ``source``."""
    for value in _traceback_locals(exc):
        try:  # getattr may run a property of a library object: anything may go wrong there
            source = value if isinstance(value, (str, os.PathLike)) else getattr(value, "source", None)
        except Exception:
            continue
        text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        if not isinstance(text, str) or len(text) >= 4096:
            continue
        try:
            if any(os.path.isfile(os.path.join(text, n)) for n in ("config.json", "adapter_config.json")):
                return text
        except (OSError, ValueError):
            continue
    return None


def _loading_folder(exc: BaseException) -> str | None:
    """The model folder or id a failure was loading, when it was raised inside a library's
    ``from_pretrained`` (transformers, peft, tokenizers) and the frame names what it loaded."""
    if not _raised_in(exc, "transformers", "peft", "tokenizers", "huggingface_hub"):
        return None
    tb = exc.__traceback__
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "from_pretrained":
            for key in ("pretrained_model_name_or_path", "model_id", "path"):
                value = frame.f_locals.get(key)
                if isinstance(value, (str, os.PathLike)):
                    found = os.fspath(value)
                    break
        tb = tb.tb_next
    return found


def _os_message(exc: OSError) -> str | None:
    if exc.errno not in _OS_REASONS:
        return None
    filename = exc.filename
    if not (filename or exc.errno in _FULL or exc.errno in (errno.ENOMEM, errno.ENODEV)):
        return None
    where = f"{filename}: " if filename else ""
    advice = _OS_ADVICE.get(exc.errno, "pick another path")
    return f"{where}{_OS_REASONS[exc.errno]}; {advice}"


def _damaged(exc: BaseException, what: str, suffixes: tuple[str, ...], detail: str, inside: str | None = None,
             confirm=None) -> str:
    path = _file_in_traceback(exc, suffixes, inside, confirm)
    where = f"{path}: " if path else ""
    return (f"{where}damaged {what} ({cut(one_line(detail))}); write it again with the command that made it, "
            "or copy or download it again")


def _memory_message(exc: BaseException) -> str:
    return (f"out of memory ({cut(one_line(exc) or exc.__class__.__name__, 150)}); use a smaller --batch-size, "
            "fewer or smaller images, or a machine with more memory")


_MEMORY_TEXT = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "file write failed", "disk quota exceeded")


def _hub_message(exc: BaseException) -> str | None:
    try:
        from huggingface_hub import errors as hub
    except ImportError:  # pragma: no cover - a requirement
        return None
    repo = getattr(exc, "repo_id", None) or ""
    name = f"{repo}: " if repo else ""
    # LocalEntryNotFoundError (offline, not cached) subclasses EntryNotFoundError: test it first
    if isinstance(exc, hub.LocalEntryNotFoundError) or exc.__class__.__name__ == "OfflineModeIsEnabled":
        return (f"{name}not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set, or no "
                "network); download it where there is a network, or pass a local folder")
    if isinstance(exc, hub.GatedRepoError):
        return f"{name}a gated repository: accept its terms on the Hub, then log in (hf auth login)"
    if isinstance(exc, hub.RepositoryNotFoundError):
        return f"{name}no such repository on the Hub (or it is private: log in with hf auth login); check the id"
    if isinstance(exc, hub.RevisionNotFoundError):
        return f"{name}no such revision on the Hub; check --revision"
    if isinstance(exc, hub.EntryNotFoundError):
        return f"{name}a file is missing from the repository ({cut(one_line(exc), 150)})"
    if isinstance(exc, hub.StrictDataclassError):
        # transformers 5 validates config.json's fields with huggingface_hub's strict dataclasses
        return _damaged(exc, "model config", ("config.json",), str(exc), inside="config.json")
    if exc.__class__.__name__ == "HFValidationError":
        return (f"not a folder here, nor a Hub repo id (namespace/name): {cut(one_line(exc), 150)}; check the "
                "path or the id")
    if isinstance(exc, hub.HfHubHTTPError):
        return f"{name}the Hub refused the request ({cut(one_line(exc), 200)}); check the id, the token and the network"
    if isinstance(exc, (ConnectionError, TimeoutError)) or exc.__class__.__module__.split(".")[0] in ("httpx",
                                                                                                     "requests"):
        return (f"cannot reach the Hub or server ({cut(one_line(exc) or exc.__class__.__name__, 150)}); check the "
                "network, or set HF_HUB_OFFLINE=1 and pass local folders")
    return None


def _classify_one(exc: BaseException) -> str | None:
    """The message for this exception alone (not its causes), or None."""
    import json

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "input nested too deeply to read (a file or value that refers to itself?); check the inputs"
    if isinstance(exc, MemoryError):
        return _memory_message(exc)
    hub = _hub_message(exc)
    if hub:
        return hub
    text = str(exc).lower()
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return _os_message(exc)
        if any(t in text for t in _DISK_FULL_TEXT):
            return f"no space left on the device ({cut(one_line(exc), 150)}); free some space and run it again"
        if _raised_in(exc, "transformers", "peft", "huggingface_hub", "tokenizers"):
            # the libraries raise a bare OSError (no errno) with a sentence for a folder that lacks
            # a file or holds an unreadable one ("... does not appear to have a file named ...")
            return f"cannot load ({cut(one_line(exc))}); check the folder, or pass the one written by this toolkit"
        return None
    name = exc.__class__.__name__
    if name == "SafetensorError":
        if any(t in text for t in _DISK_FULL_TEXT):
            return f"no space left on the device ({cut(one_line(exc), 150)}); free some space and run it again"
        return _damaged(exc, "weights file", (".safetensors",), f"safetensors: {exc}")
    if isinstance(exc, RuntimeError) and any(t in text for t in _MEMORY_TEXT):
        return _memory_message(exc)
    if isinstance(exc, RuntimeError) and any(t in text for t in _DISK_FULL_TEXT):
        return f"no space left on the device ({cut(one_line(exc), 150)}); free some space and run it again"
    if isinstance(exc, RuntimeError) and ("pytorchstreamreader" in text or "zip archive" in text):
        return _damaged(exc, "torch file", _WEIGHT_SUFFIXES, str(exc))
    if isinstance(exc, RuntimeError) and ("pytorchstreamwriter" in text or "inline_container" in text):
        # torch.save's writer reports a full disk as a position mismatch, without the OS error
        return (f"writing a torch file failed ({cut(one_line(exc), 150)}): most often no space left on the device; "
                "free some space and run it again")
    if name in ("UnpicklingError", "BadZipFile"):
        return _damaged(exc, "file", _WEIGHT_SUFFIXES, str(exc))
    if isinstance(exc, json.JSONDecodeError):
        return _damaged(exc, "JSON file", (".json", ".jsonl"), f"{exc.msg} at line {exc.lineno} column {exc.colno}",
                        confirm=_not_json)
    if exc.__class__.__module__.startswith("jinja2") and name.startswith("Template"):
        where = getattr(exc, "filename", None) or getattr(exc, "name", None)
        line = getattr(exc, "lineno", None)
        return (f"{where + ': ' if where else ''}template error{f' at line {line}' if line else ''} "
                f"({cut(one_line(getattr(exc, 'message', None) or exc), 200)}); fix the template")
    if exc.__class__.__module__.startswith("yaml") and isinstance(exc, Exception) and name.endswith("Error"):
        return _damaged(exc, "YAML file", _TEXT_SUFFIXES, str(exc))
    if isinstance(exc, UnicodeDecodeError):
        path = _file_in_traceback(exc, _TEXT_SUFFIXES, confirm=_not_utf8)
        return f"{path + ': ' if path else ''}not UTF-8 text (byte {exc.start}); save it as UTF-8"
    if type(exc) is Exception and _raised_in(exc, "tokenizers", "transformers.tokenization_utils_tokenizers",
                                            "transformers.tokenization_utils_fast"):
        # the Rust tokenizer raises a bare Exception for a tokenizer.json it cannot parse
        return _damaged(exc, "tokenizer file", (".json",), str(exc))
    loading = _loading_folder(exc)
    if loading is not None and isinstance(exc, (ValueError, KeyError, TypeError, AttributeError)):
        # a folder transformers or peft cannot make a model, tokenizer or processor of: its
        # files are missing, from another version, or edited by hand
        return (f"{loading}: cannot load it ({exc.__class__.__name__}: {cut(one_line(exc), 200)}); check that the "
                "folder is complete (save or download it again)")
    if name in ("UnidentifiedImageError", "DecompressionBombError"):
        return f"not a readable image ({cut(one_line(exc), 200)}); pass a PNG, JPEG, WebP, BMP, GIF or TIFF file"
    if isinstance(exc, _REJECTIONS) and _raised_in(exc, *_FILE_READERS):
        # the libraries that read a model folder's files raised on a value from them (a token id
        # that is text, a size that is a string, a missing pad token, an option this version
        # cannot merge): the input is at fault, and where it came from is the model folder
        folder = _model_in_traceback(exc)
        where = f"{folder}: " if folder else ""
        return (f"{where}a value in the model's files cannot be used ({exc.__class__.__name__}: "
                f"{cut(one_line(exc), 200)}); check its config, generation, processor and tokenizer files, or save or "
                "download the folder again")
    return None


def user_message(exc: BaseException) -> str | None:
    """The one-line message for ``exc`` when its cause is outside the toolkit (a user's
    mistake, a damaged file, the disk, memory, the network), else None (a bug: the boundary
    reports it as an internal error). A wrapped failure (``raise ... from e``, or raised while
    handling ``e``) is classified by the first exception in the chain that has a kind."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        message = _classify_one(exc)
        if message is not None:
            return cut(one_line(message), MAX_MESSAGE)
        exc = exc.__cause__ or exc.__context__
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
    """Run ``body`` and return its exit code (None counts as 0): the one error boundary.

    A failure whose cause is outside the toolkit (:func:`user_message`) is one line on stderr
    and code 2; Ctrl-C code 130; a closed pipe (``| head``) ends quietly with code 141;
    anything else is a bug of the toolkit: one line saying so, and code 1. ``--debug`` keeps
    every traceback. ``prefix`` goes before the message."""
    quiet_third_party()
    try:
        rc = body()
    except KeyboardInterrupt:
        if debug:
            raise
        _end_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (caption ... | head -1): nothing left to say to it
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        if debug or e.__class__.__module__.startswith("click."):
            raise  # click's exits and usage errors: the release group reports them its own way
        message = user_message(e)
        _end_progress_bars()
        if message is None:
            print(f"error: {prefix}internal error ({e.__class__.__name__}: {cut(one_line(e), 200)}); this is a bug "
                  f"of the toolkit: run the command again with {DEBUG_FLAG} for the traceback and report it",
                  file=sys.stderr)
            return 1
        print(f"error: {prefix}{message}", file=sys.stderr)
        return 2
    return 0 if rc is None else int(rc)


def _end_progress_bars() -> None:
    """Close the progress bars a failure left open, so the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        with contextlib.suppress(Exception):
            bar.leave = False
            bar.close()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                body: Callable[[argparse.Namespace], int | None]) -> int:
    """A command's whole life: ``--debug`` taken off, the flags parsed (``--help`` and a usage
    mistake, already printed as one line, end here with their exit code), then ``body(args)``
    inside the error boundary (:func:`guarded`). Returns the exit code."""
    argv, debug = pop_debug(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return guarded(lambda: body(args), debug=debug)
