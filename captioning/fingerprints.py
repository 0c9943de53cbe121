"""Identity by content, never by path: :func:`weights_fingerprint` hashes the tensors of a
folder's safetensors files (names, dtypes, shapes, bytes), so a folder copied elsewhere, or
made portable for transformers 4.x (config edits only), keeps its fingerprint, and two
folders with other weights never share one."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from captioning.errors import UserError


def weights_fingerprint(folder: str | os.PathLike) -> str | None:
    """sha256 over the tensors in ``folder``'s safetensors files: each tensor's name, dtype,
    shape and bytes, in name order (so shard layout and header metadata do not matter).
    None when the folder holds no safetensors file.

    Read straight from the files (8-byte header length, JSON header, data): no library
    hashes tensor contents independently of the file layout, and loading them into torch
    would double the memory of a large checkpoint.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    # a push hashes the base, the adapter and the release more than once (identity check,
    # merge check, manifest): the same files, unchanged, are hashed once per process
    stats = [f.stat() for f in files]
    key = tuple((str(f.resolve()), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for f, s in zip(files, stats))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _hash_tensors(files)
    return _FINGERPRINTS[key]


_FINGERPRINTS: dict[tuple, str] = {}


def _hash_tensors(files: list[Path]) -> str:
    entries = []
    for f in files:
        try:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > min(f.stat().st_size - 8, 100_000_000):  # safetensors caps its header at 100 MB
                    raise ValueError("header length past the end of the file")
                header = json.loads(fh.read(n))
                if not isinstance(header, dict):
                    raise ValueError("header is not a JSON object")
            for name, info in header.items():
                if name != "__metadata__":
                    (begin, end), dtype, shape = info["data_offsets"], info["dtype"], info["shape"]
                    entries.append((name, dtype, shape, f, 8 + n + begin, end - begin))
        except (OSError, struct.error, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{f}: not a readable safetensors file ({e.__class__.__name__}); "
                            "re-save the model with save_pretrained()") from None
    total = hashlib.sha256()
    for name, dtype, shape, f, start, size in sorted(entries, key=lambda e: e[0]):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            fh.seek(start)
            left = size
            while left:
                block = fh.read(min(left, 1 << 22))
                if not block:
                    raise UserError(f"{f}: truncated safetensors file; re-save the model")
                h.update(block)
                left -= len(block)
        total.update(f"{name}\0{dtype}\0{shape}\0{h.hexdigest()}\n".encode())
    return total.hexdigest()


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits, as fingerprints are shown in messages and cards."""
    return fingerprint[:12] if fingerprint else "unknown"


def model_fingerprint(source: str | os.PathLike | None, revision: str | None = None) -> str | None:
    """:func:`weights_fingerprint` of a model folder, or of a Hub model's files in the local
    cache (what was loaded); None when neither is on this machine."""
    if source is None:
        return None
    if Path(source).is_dir():
        return weights_fingerprint(source)
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(source), revision=revision, local_files_only=True,
                                   allow_patterns=["*.safetensors", "*.json"])
    except Exception:
        return None
    return weights_fingerprint(folder)
