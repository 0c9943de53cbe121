"""Files written atomically, one writer per output, JSON and YAML read safely: the I/O every
stage shares.

- Every write goes through :func:`write_atomic`: a temporary file in the same folder, fsynced,
  renamed over the target (readers never see half a file), with the mode a plain ``open``
  would give under the current umask. A folder is assembled in :func:`partial_folder` and
  moved in whole by :func:`replace_folder`.
- Everything half-written is named ``.NAME.partial-*`` beside or inside its target, so the
  next writer of that target finds and removes what a killed run left (:func:`output_lock`).
- :func:`output_lock` makes a command the one writer of its output: a second one is refused
  in one line naming the first one's pid; a lock left by a dead process is taken over.
- Every JSON file is read through :func:`read_json_file` and written through
  :func:`write_json`; every YAML file is parsed by captioning.safe_yaml.parse_yaml. Both refuse what is
  not data: NaN and Infinity, duplicate keys, YAML alias bombs, oversized files.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captioning.errors import UserError


def _umask() -> int:
    """The process umask. Read from /proc where it can be: os.umask() can only be read by
    setting it, and for that moment a file another thread creates would get mode 0666."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that readers never see a half-written file.

    The bytes go to a temporary file in the same folder (same filesystem, so the final
    ``os.replace`` is atomic) and are fsynced first; the file gets the mode ``open`` would
    give it (0666 less the umask: mkstemp's owner-only mode would hide shared results).
    The parent folder is created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_name(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def partial_name(target: str | os.PathLike) -> str:
    """The name prefix of everything half-written for ``target``: ``.NAME.partial-``. Hidden,
    so nothing half-written ever looks complete, and one pattern, so the next writer of
    ``target`` finds what a killed run left (:func:`remove_partials`)."""
    return f".{Path(target).name}{_PARTIAL}"


_PARTIAL = ".partial-"


@contextlib.contextmanager
def partial_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside ``target`` to assemble it in (same file system, so
    :func:`replace_folder` moves it in with one rename); removed on the way out, whatever
    happens. A run killed before that leaves it for the next writer of ``target`` to remove."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{partial_name(target)}{os.getpid()}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``dst`` (same filesystem): an old ``dst`` is
    renamed aside first and removed only once the new one is in place, so ``dst`` is at
    every moment either the old folder or the complete new one."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.with_name(f"{partial_name(dst)}old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


def remove_partials(target: str | os.PathLike, log=None) -> list[Path]:
    """Remove what killed writers of ``target`` left: ``.NAME.partial-*`` beside it, and
    inside it (a folder) every ``.*.partial-*`` and write-check probe. Only the holder of
    :func:`output_lock` for ``target`` may call this: no live writer then owns them. Each
    removal is listed through ``log`` (default: stderr). Returns what was removed."""
    target = Path(target)
    found: list[Path] = []
    if target.parent.is_dir():
        found += sorted(target.parent.glob(f"{glob.escape(partial_name(target))}*"))
    if target.is_dir() and not target.is_symlink():
        for root, dirs, files in os.walk(target):
            for name in [*dirs, *files]:
                if name.startswith(".") and (_PARTIAL in name or name.startswith(".write-check-")):
                    found.append(Path(root) / name)
            dirs[:] = [d for d in dirs if not (d.startswith(".") and _PARTIAL in d)]
    say = log or (lambda msg: print(msg, file=sys.stderr))
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        say(f"removed {p} (left half-written by an interrupted run)")
    return found


# ------------------------------------------------------------------ one writer per output
#: locks this process holds: lock file -> [fd, depth]; a command that locks its output and
#: calls a core function that locks it again (push -> merge) is one writer, not two
_HELD: dict[str, list[int]] = {}


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside it (beside, not inside, so a folder
    replaced whole by :func:`replace_folder` keeps its lock, and a file can be locked too)."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, flag: str, *, file: bool = False, sweep: bool = True,
                log=None, inputs: dict[str, Any] | None = None, replaces: bool = False) -> Iterator[Path]:
    """Hold ``target`` (an output folder or file) as its one writer while the block runs.

    ``fcntl.flock`` (the standard library; no package needed on the Linux and macOS machines
    this runs on) on ``.NAME.lock`` beside it: the kernel drops the lock when its process dies,
    however it dies, so a lock left by a killed run is simply taken over, and no pid has to be
    guessed alive or dead. A second writer is refused in one line naming ``flag`` and the
    first writer's pid. Then what killed writers left half-written is removed (``sweep``).
    The lock file is removed on the way out. Checks first that ``target`` can be written
    (:func:`check_writable`; its folder when ``file``): nothing is created where nothing could
    be written, and that it is none of the command's ``inputs`` (:func:`check_not_input`)."""
    target = Path(target).expanduser()
    if file and target.is_dir():
        raise UserError(f"{flag} {target} is a folder: pass a file name")
    check_not_input(target, flag, inputs or {}, replaces=replaces)
    check_writable(target.parent if file else target, flag)
    made = _make_parents(target.parent)
    path = lock_path(target)
    key = str(path.absolute())
    try:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            _HELD[key] = [_acquire(path, target, flag), 1]
            if sweep:
                remove_partials(target, log)
        try:
            yield target
        finally:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                fd = _HELD.pop(key)[0]
                with contextlib.suppress(OSError):
                    path.unlink()
                os.close(fd)
    finally:
        for folder in made:  # created for the lock only: leave no empty folder behind a refused run
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_not_input(target: str | os.PathLike, flag: str, inputs: dict[str, Any], *, replaces: bool = False) -> None:
    """Refuse an output ``target`` that is one of the command's inputs (``{flag: path}``; None
    values are skipped): writing it would destroy what the command reads. With ``replaces``
    (the command replaces the target folder whole) an input inside it is refused too."""
    target = Path(target).expanduser().resolve()
    for in_flag, value in inputs.items():
        if value is None or value == "":
            continue
        path = Path(value).expanduser().resolve()
        if path == target:
            raise UserError(f"{flag} {target} is the {in_flag} this command reads: writing it would destroy that "
                            f"input; pick another {flag}")
        if replaces and target in path.parents:
            raise UserError(f"{flag} {target} holds the {in_flag} this command reads ({path}): replacing it would "
                            f"delete that input; pick another {flag}")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, innermost first."""
    made = []
    p = folder
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def _acquire(path: Path, target: Path, flag: str) -> int:
    """An fd holding the flock of ``path``; a UserError when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{flag} {target} is being written by another run ({holder}); wait for it to finish, "
                            f"or pick another {flag}") from None
        except BaseException:
            os.close(fd)
            raise
        # a lock released and unlinked between our open and flock is a file nobody else will
        # open again: take the lock of the file now at that path instead
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{' '.join(sys.argv)[:500]}\n".encode())
            return fd
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1000, 0).decode("utf-8", "replace").splitlines()
    except OSError:
        text = []
    pid = text[0].strip() if text and text[0].strip().isdigit() else "?"
    command = text[1].strip() if len(text) > 1 else ""
    return f"pid {pid}" + (f": {command[:150]}" if command else "")


def check_writable(folder: str | os.PathLike, flag: str) -> Path:
    """Prove that ``folder`` can be created (or written, if it exists) before the work whose
    results go there starts, leaving nothing behind; a UserError naming ``flag`` otherwise
    (a file in the way, a read-only place, no permission)."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {folder}: {existing} is a file, not a folder; pick another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or e.__class__.__name__
        raise UserError(f"{flag} {folder}: cannot write in {existing} ({reason}); pick a folder you can write "
                        "to") from None
    return folder


def dumps_json(obj: Any, *, indent: int | None = 2, path: str | os.PathLike | None = None) -> str:
    """JSON text as every record is written (UTF-8, not ASCII-escaped, newline at the end).
    NaN and Infinity are refused, naming the key (and ``path``): JSON has no such numbers, and
    a record holding one would put "NaN" in a card's model-index or a comparison table."""
    bad = non_finite(obj)
    if bad is not None:
        where = f"{path}: " if path else ""
        raise UserError(f"{where}{bad[0]} is {bad[1]}, not a number a record can hold; the run that computed it "
                        "diverged or was given bad input")
    return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`write_atomic` of ``obj`` as JSON (NaN and Infinity refused: :func:`dumps_json`)."""
    return write_atomic(path, dumps_json(obj, indent=indent, path=path))


def non_finite(obj: Any, where: str = "") -> tuple[str, str] | None:
    """(the dotted key, the value) of the first NaN or infinite number in a JSON-like value."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the value", repr(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


#: the largest JSON file read. COCO's largest caption file is well under this: a bigger one
#: is the wrong file, refused before it is read into memory whole.
MAX_JSON_BYTES = 2 * 2**30


class _Constant(str):
    """NaN / Infinity / -Infinity as the JSON reader met them (refused once it knows the key)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(ValueError):
    pass


def _constant_at(obj: Any, where: str = "") -> tuple[str, str] | None:
    if isinstance(obj, _Constant):
        return where or "the value", str(obj)
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = ((f"[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for k, v in items:
        key = f"{where}{k}" if str(k).startswith("[") else (f"{where}.{k}" if where else str(k))
        found = _constant_at(v, key)
        if found:
            return found
    return None


def special_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, when it is not one: a FIFO or socket or device
    (reading one would block or never end), a loop of symbolic links, a folder."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return "a loop of symbolic links; fix or remove the link"
        return None  # missing: the read names it
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"{kind}, not a regular file; pass a file"
    return None


def read_text_file(path: str | os.PathLike, what: str | None = None, *, max_bytes: int | None = None) -> str:
    """A UTF-8 text file's text (a BOM dropped: Windows editors write one); every way it can
    be unreadable (missing, a folder, a FIFO, a symlink loop, not UTF-8, over ``max_bytes``)
    is a one-line UserError naming it (and ``what`` it was given as: a flag, say)."""
    path = Path(path)
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    label = f"{what} " if what else ""
    problem = special_file_problem(path)
    if problem:
        raise UserError(f"{label}{path} is {problem}")
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # the read below names what is wrong
    if size > max_bytes:
        raise UserError(f"{label}{path} is {human_size(size)}: files over {human_size(max_bytes)} are refused here; "
                        "check the file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path} (no such file)" if what else f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{label}{path} is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{label}{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {label}{path}: {e.strerror or e.__class__.__name__}") from None


def human_size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def parse_json(text: str, source: str) -> Any:
    """JSON text as data; not JSON, a duplicate key, NaN or Infinity are one-line UserErrors
    naming ``source`` and the key."""
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_Constant)
    except _DuplicateKey as e:
        raise UserError(f"{source}: key {str(e)[:100]!r} appears twice in one object; keep one") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{source} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
                        "fix it, or regenerate it with the command that wrote it") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be data; check the file") from None
    bad = _constant_at(doc)
    if bad is not None:
        raise UserError(f"{source}: {bad[0]} is {bad[1]}, not a number; fix the file, or regenerate it with the "
                        "command that wrote it")
    return doc


def read_json_file(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse a JSON file (:func:`read_text_file`, then :func:`parse_json`): every way it can be
    unreadable or not data is a one-line UserError naming it."""
    path = Path(path)
    text = read_text_file(path, what)
    return parse_json(text, f"{what} {path}" if what else str(path))


def library_json(name: str) -> bool:
    """Whether a model folder's JSON file ``name`` is read by transformers or peft (configs,
    tokenizer files, a weights index) rather than by this toolkit's records, which take a BOM."""
    return (name.endswith("config.json") or name.endswith(".index.json")
            or name in ("tokenizer.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                        "vocab.json"))


def check_model_folder(folder: str | os.PathLike) -> None:
    """A saved model or adapter folder is made of regular files (and folders): a FIFO, a device
    or a link loop among them is a one-line UserError (reading one would block the command
    for ever), and every ``*.json`` at its top is data (:func:`read_json_file`: no syntax
    errors, duplicate keys or NaN), or a UserError naming the first that is not.
    transformers skips some damaged files without a word (a broken generation_config.json:
    the defaults are used) and reports others without the file's name; read once here,
    every one is named."""
    for path in sorted(Path(folder).iterdir()):
        problem = special_file_problem(path)
        # a folder is fine in a model folder, except where a weights or JSON file is named
        if problem and ("folder" not in problem or path.suffix in (".safetensors", ".json", ".bin", ".pt")):
            raise UserError(f"{path} is {problem}; the folder is damaged: save or download it again")
        if path.suffix == ".json" and path.is_file():
            with open(path, "rb") as f:
                if library_json(path.name) and f.read(3) == b"\xef\xbb\xbf":
                    # our own readers take a BOM; transformers and peft read these files and do not
                    raise UserError(f"{path} starts with a UTF-8 byte order mark, which transformers cannot read: "
                                    "save it as UTF-8 without one")
            read_json_file(path)
