"""Mutations of input files and the harness that runs one entry point on one mutated input:
the machinery of tests/test_generated_inputs.py (issue 28, item 6).

Nothing here imports the toolkit: it works on bytes, parsed JSON/YAML documents and the
file system. What a file kind is and who reads it lives in the test module.

- :func:`leaves` walks a parsed document (dict keys recursively; a list by its first item,
  which stands for the others) and :func:`set_at` replaces one leaf in a copy;
- :data:`FILE_MUTATIONS` changes a whole file (missing, empty, half, garbage, not UTF-8,
  BOM, wrong top-level type, 50 MB, nested 100,000 deep, duplicate keys, a YAML alias bomb,
  a symlink loop, a FIFO, a folder, unreadable), each for the formats it makes sense for;
- :func:`run_entry` runs ``main(argv)`` in a fork of the test process (imports and fixtures
  shared, nothing of the case left behind in it) under a deadline and a memory cap, and
  records what came out (exit code, stdout/stderr, an escaped exception and where it was
  raised, the files that appeared, changed or vanished).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import errno
import gc
import hashlib
import io
import json
import math
import os
import random
import re
import resource
import signal
import struct
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- documents

Path_ = tuple  # a leaf's path: dict keys and list indices


def leaves(doc: Any, prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    """(path, value) of every leaf of a parsed JSON/YAML document: scalars and empty
    containers. A list is walked through its first item only (its items share a shape: the
    first stands for the rest, so a 5,000-image annotations list costs one walk)."""
    if isinstance(doc, dict):
        if not doc:
            return [(prefix, doc)] if prefix else []
        out = []
        for k, v in doc.items():
            out += leaves(v, prefix + (k,))
        return out
    if isinstance(doc, list):
        if not doc:
            return [(prefix, doc)] if prefix else []
        return leaves(doc[0], prefix + (0,))
    return [(prefix, doc)]


def path_name(path: Path_) -> str:
    """``a.b[0].c`` for the path ``("a", "b", 0, "c")``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top>"


def get_at(doc: Any, path: Path_) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def set_at(doc: Any, path: Path_, value: Any) -> Any:
    """A deep copy of ``doc`` with the leaf at ``path`` replaced by ``value``."""
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = get_at(doc, path[:-1])
    parent[path[-1]] = value
    return doc


def spread(items: list, cap: int | None) -> list:
    """At most ``cap`` of ``items``, evenly spaced from the first to the last (all of them
    when ``cap`` is None): a fixed, reproducible sample that spans the whole document."""
    if cap is None or len(items) <= cap:
        return list(items)
    if cap == 1:
        return [items[0]]
    picks = sorted({round(i * (len(items) - 1) / (cap - 1)) for i in range(cap)})
    return [items[i] for i in picks]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what a leaf is replaced with: a value of another JSON type than the one it holds
TYPE_SWAPS = {
    "as_string": "not-the-right-type",
    "as_list": [1, "two"],
    "as_null": None,
    "as_object": {"unexpected": 1},
}
#: replaces a string leaf's "as_string" swap (a string there is no type change)
AS_NUMBER = 12345
NUMBER_SWAPS = {"nan": math.nan, "inf": math.inf, "neg_inf": -math.inf}
HUGE_STRING_CHARS = 1_000_000
HUGE_FILE_BYTES = 50 * 2**20


def type_swap(value: Any, family: str) -> tuple[bool, Any]:
    """(applies, replacement) of swap ``family`` for a leaf holding ``value``: no swap to
    the type it already has."""
    if family == "as_string":
        return True, (AS_NUMBER if isinstance(value, str) else TYPE_SWAPS["as_string"])
    if family == "as_list":
        return not isinstance(value, list), TYPE_SWAPS["as_list"]
    if family == "as_null":
        return value is not None, None
    if family == "as_object":
        return not isinstance(value, dict), copy.deepcopy(TYPE_SWAPS["as_object"])
    if family in NUMBER_SWAPS:
        return is_number(value), NUMBER_SWAPS[family]
    if family == "huge_string":
        return isinstance(value, str), "x" * HUGE_STRING_CHARS
    raise AssertionError(family)


LEAF_FAMILIES = (*TYPE_SWAPS, *NUMBER_SWAPS, "huge_string")


# --------------------------------------------------------------------------- formats


def parse(data: bytes, fmt: str) -> Any:
    """A file's document: JSON, YAML, or JSON lines (a list of the lines' documents)."""
    text = data.decode("utf-8-sig")
    if fmt == "json":
        return json.loads(text)
    if fmt == "yaml":
        import yaml

        return yaml.safe_load(text)
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise AssertionError(fmt)


def _placeholders(doc: Any, found: dict[str, str]) -> Any:
    """``doc`` with every string over 10,000 characters replaced by a short placeholder (kept in
    ``found``): the YAML emitter writes a 50 MB string in tens of seconds, a replace in none."""
    if isinstance(doc, dict):
        return {k: _placeholders(v, found) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_placeholders(v, found) for v in doc]
    if isinstance(doc, str) and len(doc) > 10_000:
        key = f"LONGSTRING{len(found)}PLACEHOLDER"
        found[key] = doc
        return key
    return doc


def dump(doc: Any, fmt: str) -> bytes:
    """``doc`` written as ``fmt`` (NaN and infinities as JSON's ``NaN``/``Infinity`` and
    YAML's ``.nan``/``.inf``)."""
    found: dict[str, str] = {}
    doc = _placeholders(doc, found)
    if fmt == "json":
        data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    elif fmt == "yaml":
        import yaml

        data = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10**9).encode()
    elif fmt == "jsonl":
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in doc).encode()
    else:
        raise AssertionError(fmt)
    for key, text in found.items():  # long strings here are plain "xxx...": no quoting to redo
        data = data.replace(key.encode(), text.encode())
    return data


class Pairs(list):
    """A JSON object written from (key, value) pairs, so a key can appear twice."""


def _dumps_pairs(obj: Any) -> str:
    if isinstance(obj, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps_pairs(v)}" for k, v in obj) + "}"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps_pairs(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_dumps_pairs(v) for v in obj) + "]"
    return json.dumps(obj)


def _other_value(value: Any) -> Any:
    """A value of the same type as ``value`` but different (the duplicate key's)."""
    if isinstance(value, bool):
        return not value
    if is_number(value):
        return value + 1
    if isinstance(value, str):
        return value + "-duplicate"
    if value is None:
        return "duplicate"
    if isinstance(value, list):
        return value[:-1] if value else [1]
    return {}


def with_duplicate_key(doc: Any) -> Any | None:
    """``doc`` with its first scalar leaf's key written twice in its object, the second time
    with another value of the same type (which one wins is ambiguous); None when no leaf
    sits in an object."""
    for path, _value in leaves(doc):
        if path and isinstance(path[-1], str):
            parent = get_at(doc, path[:-1])
            dup = Pairs()
            for k, v in parent.items():
                dup.append((k, v))
                if k == path[-1]:
                    dup.append((k, _other_value(v)))
            return set_at(doc, path[:-1], dup) if path[:-1] else dup
    return None


def dump_with_pairs(doc: Any, fmt: str) -> bytes:
    """JSON text (also valid YAML, a JSON superset for these documents) keeping
    :class:`Pairs` duplicates; one line per item for JSON lines."""
    if fmt == "jsonl":
        return "".join(_dumps_pairs(line) + "\n" for line in doc).encode()
    return (_dumps_pairs(doc) + "\n").encode()


def alias_bomb_yaml(doc: Any, levels: int = 9, width: int = 9) -> bytes:
    """YAML "billion laughs": anchors ``l1``..``l{levels}``, each a list of ``width`` aliases
    of the one before (``width ** levels`` strings once expanded), defined under an extra
    top-level key, and the last one as the value of the document's first leaf (or of an
    extra key when the document is no mapping)."""
    import yaml

    lines = ["x-anchors:", f"  l1: &l1 [{', '.join(['lol'] * width)}]"]
    for i in range(2, levels + 1):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    found = leaves(doc) if isinstance(doc, dict) else []
    if found:
        body = yaml.safe_dump(set_at(doc, found[0][0], "__BOMB__"), sort_keys=False, width=10**9)
        body = body.replace("'__BOMB__'", f"*l{levels}").replace("__BOMB__", f"*l{levels}")
    else:
        body = f"value: *l{levels}\n"
    return ("\n".join(lines) + "\n" + body).encode()


# --------------------------------------------------------------------------- whole files


def _garbage(n: int = 4096, seed: int = 28) -> bytes:
    """Fixed random bytes (with newlines among them, as any binary junk has)."""
    return random.Random(seed).randbytes(n)


def _first_string_path(doc: Any) -> Path_ | None:
    return next((p for p, v in leaves(doc) if isinstance(v, str)), None)


def not_utf8(data: bytes, fmt: str) -> bytes:
    """The text re-encoded as Latin-1 with an ``é`` added to its first string (so it parses
    as what it was, but its bytes are not UTF-8); binary formats get a stray 0xff byte."""
    if fmt in ("json", "yaml", "jsonl"):
        doc = parse(data, fmt)
        path = _first_string_path(doc)
        if path is not None:
            return dump(set_at(doc, path, get_at(doc, path) + "é"), fmt).decode().encode("latin-1", "replace")
    if fmt == "csv":
        text = data.decode("utf-8-sig")
        return text.replace("\n", "é\n", 2).encode("latin-1", "replace")
    half = len(data) // 2
    return data[:half] + b"\xff\xfe" + data[half:]


def huge_file(data: bytes, fmt: str) -> bytes:
    """A huge file: the first string of a JSON document padded to 50 MB (a valid document),
    of a YAML document to 1,000,000 characters (PyYAML's pure-Python scanner needs ~12 s for a
    50 MB string: measured; a case cannot wait that long each time), a CSV/JSON-lines caption
    of 50 MB, or 50 MB of junk after a binary file."""
    if fmt in ("json", "yaml", "jsonl"):
        doc = parse(data, fmt)
        path = _first_string_path(doc)
        size = HUGE_STRING_CHARS if fmt == "yaml" else HUGE_FILE_BYTES
        if path is not None:
            return dump(set_at(doc, path, "x" * size), fmt)
        return data + b" " * size
    if fmt == "csv":
        head, _, rest = data.decode("utf-8-sig").partition("\n")
        first, _, others = rest.partition("\n")
        cells = first.split(",")
        cells[-1] = '"' + "x" * HUGE_FILE_BYTES + '"'
        return (head + "\n" + ",".join(cells) + "\n" + others).encode()
    return data + _garbage(HUGE_FILE_BYTES, seed=50)


def deep_nesting(fmt: str, depth: int = 100_000) -> bytes:
    """A document nested ``depth`` lists deep (a recursive reader's stack overflows)."""
    if fmt == "jsonl":
        return ("[" * depth + "]" * depth + "\n").encode()
    return ("[" * depth + "]" * depth).encode()


def _top_level(kind: str, fmt: str, original: Any) -> bytes:
    """A document of another top-level type than ``original``'s."""
    values = {"list_or_object": {} if isinstance(original, list) else [1, 2],
              "string": "just a string", "number": 42, "null": None}
    value = values[kind]
    if fmt == "jsonl":
        return (json.dumps(value) + "\n").encode()
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(value).encode()
    return json.dumps(value).encode()


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` holding the pixels of a 1x1 image: its
    header claims the size, its data does not (a decompression bomb's header is all a
    reader needs to refuse it)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"\x00" + bytes(color))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def safetensors_with_header(header: bytes, length: int | None = None, tail: bytes = b"") -> bytes:
    """A safetensors file: 8-byte little-endian header length (``length``, default the true
    one), the header, then ``tail``."""
    return struct.pack("<Q", len(header) if length is None else length) + header + tail


@dataclass
class FileMutation:
    """One way a whole file goes wrong: ``make(path, original bytes, format)`` puts it in
    place of ``path`` (the original is already removed)."""

    name: str
    formats: tuple[str, ...]
    make: Callable[[Path, bytes, str], None]
    #: for formats whose parsed document decides whether it applies (None: always)
    applies: Callable[[bytes, str], bool] | None = None


def _write(content: Callable[[bytes, str], bytes]) -> Callable[[Path, bytes, str], None]:
    def make(path: Path, data: bytes, fmt: str) -> None:
        path.write_bytes(content(data, fmt))
    return make


def _symlink_loop(path: Path, data: bytes, fmt: str) -> None:
    other = path.with_name(path.name + ".loop")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


def _fifo(path: Path, data: bytes, fmt: str) -> None:
    os.mkfifo(path)


def _folder(path: Path, data: bytes, fmt: str) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("a folder stands where the file should be\n")


def _dup_applies(data: bytes, fmt: str) -> bool:
    try:
        return with_duplicate_key(parse(data, fmt)) is not None
    except ValueError:
        return False


def _dup(data: bytes, fmt: str) -> bytes:
    return dump_with_pairs(with_duplicate_key(parse(data, fmt)), fmt)


def _bomb(data: bytes, fmt: str) -> bytes:
    return alias_bomb_yaml(parse(data, fmt))


def _safetensors_header_mutation(change: Callable[[dict], Any]) -> Callable[[bytes, str], bytes]:
    def content(data: bytes, fmt: str) -> bytes:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        new = json.dumps(change(header)).encode()
        return safetensors_with_header(new, tail=data[8 + n:])
    return content


def _shape_mismatch(header: dict) -> dict:
    """Every tensor's shape doubled in its first dimension (its bytes stay as they were)."""
    out = {}
    for k, v in header.items():
        if isinstance(v, dict) and v.get("shape"):
            v = {**v, "shape": [v["shape"][0] * 2, *v["shape"][1:]]}
        out[k] = v
    return out


TEXT = ("json", "yaml", "jsonl", "csv")
STRUCTURED = ("json", "yaml", "jsonl")
ALL = TEXT + ("safetensors", "png")

FILE_MUTATIONS: list[FileMutation] = [
    FileMutation("missing", ALL, lambda p, d, f: None),
    FileMutation("empty", ALL, _write(lambda d, f: b"")),
    FileMutation("truncated", ALL, _write(lambda d, f: d[:len(d) // 2])),
    FileMutation("garbage", ALL, _write(lambda d, f: _garbage())),
    FileMutation("not_utf8", TEXT, _write(not_utf8)),
    FileMutation("bom", TEXT, _write(lambda d, f: b"\xef\xbb\xbf" + d)),
    *[FileMutation(f"top_{k}", STRUCTURED, _write(lambda d, f, k=k: _top_level(k, f, parse(d, f))))
      for k in ("list_or_object", "string", "number", "null")],
    FileMutation("huge_file", ALL, _write(huge_file)),
    FileMutation("deep_nesting", STRUCTURED, _write(lambda d, f: deep_nesting(f))),
    FileMutation("duplicate_key", STRUCTURED, _write(_dup), applies=_dup_applies),
    FileMutation("alias_bomb", ("yaml",), _write(_bomb)),
    FileMutation("symlink_loop", ALL, _symlink_loop),
    FileMutation("fifo", ALL, _fifo),
    FileMutation("folder", ALL, _folder),
    FileMutation("unreadable", ALL, _write(lambda d, f: d)),  # made unreadable by the harness
    FileMutation("header_huge_length", ("safetensors",),
                 _write(lambda d, f: safetensors_with_header(b"{}", length=2**40))),
    FileMutation("header_not_json", ("safetensors",),
                 _write(lambda d, f: safetensors_with_header(b"{not json" + b" " * 7, tail=d[64:]))),
    FileMutation("header_a_list", ("safetensors",),
                 _write(lambda d, f: safetensors_with_header(b"[1, 2, 3]", tail=d[64:]))),
    FileMutation("shapes_too_big", ("safetensors",), _write(_safetensors_header_mutation(_shape_mismatch))),
    FileMutation("decompression_bomb", ("png",), _write(lambda d, f: png_bytes(13_000, 13_000))),
    FileMutation("zero_size_image", ("png",), _write(lambda d, f: png_bytes(0, 0))),
]
#: mutations whose case must end within :data:`QUICK_S` (they are about not hanging)
QUICK = {"fifo", "alias_bomb", "deep_nesting", "symlink_loop"}
#: mutations run in a fork of the test process: they may block or spin inside native code (a
#: FIFO opened by Rust, a tokenizer on 50 MB, C recursion), where no signal stops them
ISOLATE = {"fifo", "alias_bomb", "deep_nesting", "huge_file"}
QUICK_S = 1.5


def mutations_for(fmt: str, data: bytes | None = None) -> list[FileMutation]:
    out = [m for m in FILE_MUTATIONS if fmt in m.formats]
    if data is not None:
        out = [m for m in out if m.applies is None or m.applies(data, fmt)]
    return out


def apply_file_mutation(mutation: FileMutation, path: Path, fmt: str) -> bytes:
    """Replace ``path`` by ``mutation``; returns the original bytes."""
    data = path.read_bytes()
    path.unlink()
    mutation.make(path, data, fmt)
    return data


# --------------------------------------------------------------------------- unreadable


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[str]:
    """``path`` cannot be opened for reading while the block runs; yields how.

    Not root: ``chmod 000`` (the real thing). Root (these tests' usual user) reads through
    any mode bits, so instead every Python-level open of ``path`` (``open``, ``io.open``,
    ``os.open``, hence pathlib, json, yaml, PIL, transformers' Python readers) raises
    ``PermissionError(EACCES)`` as a non-root user's would. Readers in native code (the
    safetensors and tokenizers Rust crates) open files themselves and are not covered."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0)
        try:
            yield "chmod 000"
        finally:
            path.chmod(mode)
        return
    target = os.path.realpath(path)

    def denied(file) -> bool:
        try:
            return isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(file)) == target
        except (TypeError, ValueError):
            return False

    def refuse(file):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))

    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def fake_open(file, *a, **k):
        if denied(file):
            refuse(file)
        return real_open(file, *a, **k)

    def fake_os_open(file, *a, **k):
        if denied(file):
            refuse(file)
        return real_os_open(file, *a, **k)

    builtins.open, io.open, os.open = fake_open, fake_open, fake_os_open
    try:
        yield "Python-level opens refused (EACCES; running as root)"
    finally:
        builtins.open, io.open, os.open = real_open, real_io_open, real_os_open


# --------------------------------------------------------------------------- the harness


class Hung(BaseException):
    """Raised into an in-process case that ran past its deadline (a BaseException, so the
    toolkit's own ``except Exception`` cannot swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hung` in the main thread after ``seconds``; the SIGALRM timer pytest-timeout
    may hold is put back (less the time spent) afterwards."""
    def on_alarm(signum, frame):
        raise Hung(f"still running after {seconds:g} s")

    t0 = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if left:
            signal.setitimer(signal.ITIMER_REAL, max(0.5, left - (time.monotonic() - t0)))


def _memory_cap(extra: int = 3 * 2**30) -> None:
    """Address space limited to what the process maps now plus ``extra`` (in the case's own
    process), so an input that makes the toolkit allocate without bound (an alias bomb
    expanded, a 1e12 setting) ends in MemoryError instead of taking the machine down."""
    size = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            size = int(line.split()[1]) * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if size:
        cap = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (hidden ones too; links not followed) -> (type, size, mtime)
    for files, (type,) for folders, links and others."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            import stat as st_mod

            if st_mod.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, st.st_mtime_ns)
            elif st_mod.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif st_mod.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            else:
                out[rel] = ("other",)
        # never descend into a symlinked folder
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def hashes(paths: list[Path]) -> dict[str, str | None]:
    out = {}
    for p in paths:
        try:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else (
                "dir:" + ",".join(sorted(x.name for x in p.iterdir())) if p.is_dir() else None)
        except OSError:
            out[str(p)] = None
    return out


def _where(tb) -> tuple[str, str]:
    """(innermost frame, innermost frame in this repository's own code) as file:line in func."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return "?", "?"

    def show(f) -> str:
        name = f.filename
        with contextlib.suppress(ValueError):
            name = str(Path(f.filename).resolve().relative_to(REPO))
        return f"{name}:{f.lineno} in {f.name}"

    ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(str(REPO))
            and "/tests/" not in f.filename and "/.venv/" not in f.filename]
    return show(frames[-1]), (show(ours[-1]) if ours else "?")


@dataclass
class Outcome:
    """What one run of an entry point did."""

    rc: int | None
    out: str
    err: str
    seconds: float
    exception: str | None = None  # "Type: message" of an exception that escaped main()
    raised_at: str | None = None  # its innermost frame
    raised_in_repo: str | None = None  # its innermost frame in the toolkit's code
    hung: bool = False
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    sentinels_changed: list[str] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error: ")]

    @property
    def traceback_shown(self) -> bool:
        return "Traceback" in self.err or "Traceback" in self.out


def _run_main(main: Callable[[list[str]], int], argv: list[str], capsys, cap_memory: bool,
              unreadable_path: Path | None, seconds: float | None) -> dict[str, Any]:
    """Run ``main(argv)`` here; what happened, as a dict (``seconds``: an in-process deadline)."""
    result: dict[str, Any] = {"rc": None, "exception": None, "raised_at": None, "raised_in_repo": None,
                              "hung": False}
    limits = resource.getrlimit(resource.RLIMIT_AS)
    try:
        if cap_memory:
            _memory_cap()
        with unreadable(unreadable_path) if unreadable_path is not None else contextlib.nullcontext():
            try:
                with deadline(seconds) if seconds else contextlib.nullcontext():
                    result["rc"] = main(list(argv))
            except Hung:
                result["hung"] = True
            except SystemExit as e:  # an entry point that exits instead of returning its code
                result["rc"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException as e:  # a bug of the toolkit: recorded, the case fails
                result["exception"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                result["raised_at"], result["raised_in_repo"] = _where(e.__traceback__)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)
    out, err = capsys.readouterr()
    result.update(out=out[-200_000:], err=err[-200_000:])
    return result


def _child(main: Callable[[list[str]], int], argv: list[str], capsys, write_fd: int, cap_memory: bool,
           unreadable_path: Path | None) -> None:
    """The forked case: run ``main(argv)``, send back what happened as JSON, and leave without
    running anything of pytest's (os._exit)."""
    try:
        data = json.dumps(_run_main(main, argv, capsys, cap_memory, unreadable_path, None), default=str).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        os._exit(0)


def run_entry(main: Callable[[list[str]], int], argv: list[str], *, capsys, watch: Path,
              sentinels: list[Path] = (), seconds: float = 30.0, cap_memory: bool = True,
              ignore: Callable[[str], bool] | None = None, unreadable_path: Path | None = None,
              fork: bool = True) -> Outcome:
    """Run ``main(argv)`` and record what it did to ``watch``: exit code, stdout/stderr through
    ``capsys``, an escaped exception, files new, changed or removed, the bytes of ``sentinels``
    before and after (``ignore(relpath)``: paths under ``watch`` not to report); its memory is
    capped (:func:`_memory_cap`).

    ``fork``: in a forked copy of this process, so that it can be stopped at ``seconds`` whatever
    it does (a FIFO read blocked inside Rust's safetensors, a tokenizer chewing a megabyte
    prompt with the GIL held: neither ever sees a signal) and what it loads or leaks dies with
    it. Without: here, under a SIGALRM deadline (cheaper: no fork, imports and caches warm)."""
    before = snapshot(watch)
    sentinel_before = hashes(list(sentinels))
    capsys.readouterr()
    t0 = time.monotonic()
    if fork:
        result, status, hung = _forked(main, argv, capsys, seconds, cap_memory, unreadable_path)
    else:
        result, status = _run_main(main, argv, capsys, cap_memory, unreadable_path, seconds), 0
        hung = result["hung"]
    elapsed = time.monotonic() - t0
    outcome = Outcome(rc=result.get("rc"), out=result.get("out", ""), err=result.get("err", ""), seconds=elapsed,
                      hung=hung, exception=result.get("exception"), raised_at=result.get("raised_at"),
                      raised_in_repo=result.get("raised_in_repo"))
    if not hung and not result:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        outcome.exception = (f"the process died ({signal.Signals(sig).name})" if sig else
                             f"the process ended without a result (status {status})")
        outcome.raised_at = outcome.raised_in_repo = "?"
    after = snapshot(watch)
    ignore = ignore or (lambda rel: False)
    outcome.new = sorted(p for p in after if p not in before and not ignore(p))
    outcome.removed = sorted(p for p in before if p not in after and not ignore(p))
    # a file rewritten, or any path that changed kind (a FIFO or a link replaced by a file)
    outcome.changed = sorted(p for p in before if p in after and before[p] != after[p] and not ignore(p)
                             and (before[p][0] == "file" or before[p][0] != after[p][0]))
    sentinel_after = hashes(list(sentinels))
    outcome.sentinels_changed = sorted(k for k in sentinel_before if sentinel_before[k] != sentinel_after[k])
    return outcome


def _forked(main, argv, capsys, seconds: float, cap_memory: bool, unreadable_path) -> tuple[dict, int, bool]:
    """(result, wait status, hung) of :func:`_run_main` in a child process killed at ``seconds``."""
    import select

    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    # frozen, the parent's objects are never visited by the child's garbage collector, whose
    # every pass would otherwise copy the whole heap page by page (copy-on-write)
    gc.freeze()
    # libgomp is not fork-safe: a child that enters a parallel region of the parent's OpenMP
    # pool (2 threads) waits for threads it does not have, for ever. One thread while forking,
    # so the child runs every region inline.
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    pid = os.fork()
    if pid == 0:  # the case
        os.close(read_fd)
        _child(main, argv, capsys, write_fd, cap_memory, unreadable_path)
    if torch is not None:
        torch.set_num_threads(threads)
    gc.unfreeze()
    os.close(write_fd)
    chunks, hung = [], False
    end = time.monotonic() + seconds
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                data = os.read(read_fd, 1 << 20)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = {}
    if chunks:
        with contextlib.suppress(ValueError):
            result = json.loads(b"".join(chunks))
    return result, status, hung


# --------------------------------------------------------------------------- comparing runs

_VOLATILE_KEYS = {"created", "seconds", "timing", "command", "versions", "generation_s", "scoring_s",
                  "images_per_s", "train_runtime", "train_samples_per_second", "train_steps_per_second", "runtime",
                  "samples_per_second", "steps_per_second"}
_MASKS = [
    (re.compile(r"\b\d+(\.\d+)?\s?s\b"), "<T>"),  # durations: 0.3s, 12 s
    (re.compile(r"\(\d+(\.\d+)? ?s\)"), "(<T>)"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?"), "<TIME>"),
    (re.compile(r"events\.out\.tfevents\.[\w.-]+"), "events.out.tfevents.<X>"),
    (re.compile(r"\.(release|write-check|partial|old)-[\w-]+"), ".<TMP>"),
    (re.compile(r"\d+(\.\d+)? ?(it|img)/s"), "<RATE>"),
    (re.compile(r"'(train_runtime|train_samples_per_second|train_steps_per_second)': '[\d.e+-]+'"), r"'\1': <X>"),
]


def normalise_text(text: str, roots: dict[str, str]) -> str:
    """``text`` with the case's folder names and run-to-run noise (durations, times, temp
    names) replaced by placeholders."""
    for path, name in sorted(roots.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    for rx, repl in _MASKS:
        text = rx.sub(repl, text)
    return text


def _drop_volatile(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _drop_volatile(v) for k, v in doc.items() if k not in _VOLATILE_KEYS}
    if isinstance(doc, list):
        return [_drop_volatile(v) for v in doc]
    return doc


def file_signature(path: Path, roots: dict[str, str]) -> str:
    """A file's content as compared between runs: JSON without its volatile keys, text
    normalised, anything else by hash. A leading UTF-8 BOM does not count (an input's BOM that
    a command copies into its output is the same content)."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if path.suffix == ".json":
        try:
            doc = _drop_volatile(json.loads(data))
            return normalise_text(json.dumps(doc, sort_keys=True), roots)
        except ValueError:
            pass
    if path.suffix in (".md", ".txt", ".yaml", ".jinja", ".html", ".svg", ".csv", ".jsonl"):
        with contextlib.suppress(UnicodeDecodeError):
            return normalise_text(data.decode(), roots)
    return hashlib.sha256(data).hexdigest()


def behaviour(outcome: Outcome, watch: Path, roots: dict[str, str], ignore=None) -> dict:
    """What a run did, comparable across case folders: exit code, normalised output and the
    normalised content of the files it wrote or changed."""
    files = {}
    for rel in sorted(set(outcome.new) | set(outcome.changed)):
        if ignore is not None and ignore(rel):
            continue
        p = watch / rel
        if p.is_file() and not p.is_symlink():
            files[normalise_text(rel, roots)] = file_signature(p, roots)
        elif p.is_dir():
            files[normalise_text(rel, roots)] = "<dir>"
    return {"rc": outcome.rc, "exception": outcome.exception,
            "stdout": normalise_text(outcome.out, roots), "stderr": normalise_text(outcome.err, roots),
            "files": files}


def first_difference(a: dict, b: dict) -> str:
    """Where two :func:`behaviour` records differ, in a line."""
    for key in ("rc", "exception", "stdout", "stderr"):
        if a[key] != b[key]:
            la, lb = str(a[key]).splitlines(), str(b[key]).splitlines()
            for x, y in zip(la + [""] * len(lb), lb + [""] * len(la)):
                if x != y:
                    return f"{key}: {x[:160]!r} vs {y[:160]!r}"
            return f"{key} differs"
    fa, fb = a["files"], b["files"]
    if set(fa) != set(fb):
        return f"files written: {sorted(set(fa) ^ set(fb))[:4]}"
    for k in fa:
        if fa[k] != fb[k]:
            x, y = str(fa[k]), str(fb[k])
            i = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            return f"{k} differs at {i}: {x[max(0, i - 60):i + 60]!r} vs {y[max(0, i - 60):i + 60]!r}"
    return ""
