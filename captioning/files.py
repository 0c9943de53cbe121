"""Files written atomically and JSON read with one-line errors: the I/O every stage shares.

Every write goes through :func:`write_atomic`: a temporary file in the same folder, fsynced,
renamed over the target (readers never see half a file), with the mode a plain ``open``
would give under the current umask. Every JSON file is read through :func:`read_json_file`.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``dst`` (same filesystem): an old ``dst`` is
    renamed aside first and removed only once the new one is in place, so ``dst`` is at
    every moment either the old folder or the complete new one."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


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


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """JSON text as every record is written (UTF-8, not ASCII-escaped, newline at the end)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`write_atomic` of ``obj`` as JSON."""
    return write_atomic(path, dumps_json(obj, indent=indent))


#: the largest JSON file read. COCO's largest caption file is well under this: a bigger one
#: is the wrong file, refused before it is read into memory whole.
MAX_JSON_BYTES = 2 * 2**30


def read_json_file(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse a JSON file; every way it can be unreadable (missing, a folder, not UTF-8, not
    JSON, over :data:`MAX_JSON_BYTES`) is a one-line UserError naming it (and ``what`` it
    was given as: a flag, say). A UTF-8 BOM is tolerated (Windows editors write one)."""
    path = Path(path)
    label = f"{what} " if what else ""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # the read below names what is wrong
    if size > MAX_JSON_BYTES:
        raise UserError(f"{label}{path} is {size / 2**30:.1f} GiB: files over {MAX_JSON_BYTES / 2**30:.0f} GiB "
                        "are refused (COCO's largest caption file is ~90 MB); check the file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path} (no such file)" if what else f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{label}{path} is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{label}{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {label}{path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{label}{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
                        "fix it, or regenerate it with the command that wrote it") from None
