"""A batch request's files: the images an upload holds (zip members read into memory with
size caps, nothing extracted), and the CSV/JSON exports written for download."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr

from captioning.files import write_atomic

from .views import esc

#: batch limits: images per request, bytes per zip member, uncompressed bytes per zip
MAX_BATCH_IMAGES = 64
MAX_MEMBER_BYTES = 32 * 2**20
MAX_ZIP_BYTES = 256 * 2**20
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: a batch export's columns: each row says which model and settings made it
EXPORT_COLUMNS = ["file", "caption", "error", "model", "model_name", "max_new_tokens", "num_beams", "temperature",
                  "top_p", "seed"]


def batch_items(paths: list) -> list[tuple[str, Any]]:
    """(name, source) of every image the uploaded files hold: an image file as it is, a
    zip's image members read into memory; a gr.Error past MAX_BATCH_IMAGES or when none."""
    items: list[tuple[str, Any]] = []
    for p in paths:
        p = Path(str(p))
        if p.suffix.lower() == ".zip":
            items.extend(zip_members(p))
        else:
            items.append((p.name, p))
        if len(items) > MAX_BATCH_IMAGES:
            raise gr.Error(f"At most {MAX_BATCH_IMAGES} images per batch.", print_exception=False)
    if not items:
        raise gr.Error("No images found in the upload (png, jpg, webp, bmp, gif, tif).",
                       print_exception=False)
    return items


def zip_members(path: Path) -> list[tuple[str, bytes]]:
    """Image members of an uploaded zip, read into memory with size caps.

    Nothing is extracted to disk (so member paths cannot escape anywhere) and each
    read is capped by bytes actually read, not by the header's claim, so a zip bomb
    stops at the limit.
    """
    out: list[tuple[str, bytes]] = []
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for zi in zf.infolist():
                name = zi.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if zi.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                    continue
                if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                label = f"{path.name}/{'/'.join(p for p in parts if p not in ('..', '/'))}"
                if len(out) >= MAX_BATCH_IMAGES:
                    raise gr.Error(f"At most {MAX_BATCH_IMAGES} images per batch.", print_exception=False)
                if zi.flag_bits & 0x1:
                    raise gr.Error(f"{esc(label)}: encrypted zip members are not supported", print_exception=False)
                if zi.file_size > MAX_MEMBER_BYTES:
                    raise gr.Error(f"{esc(label)}: {zi.file_size:,} bytes uncompressed, over the "
                                   f"{MAX_MEMBER_BYTES:,}-byte limit per image", print_exception=False)
                with zf.open(zi) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
                if len(data) > MAX_MEMBER_BYTES:
                    raise gr.Error(f"{esc(label)}: over the {MAX_MEMBER_BYTES:,}-byte limit per image",
                                   print_exception=False)
                total += len(data)
                if total > MAX_ZIP_BYTES:
                    raise gr.Error(f"{esc(path.name)}: over {MAX_ZIP_BYTES:,} bytes uncompressed in all",
                                   print_exception=False)
                out.append((label, data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise gr.Error(f"{esc(path.name)}: not a readable zip ({e.__class__.__name__})",
                       print_exception=False) from None
    return out


def write_exports(folder: Path, rows: list[dict]) -> tuple[Path, Path]:
    """A batch's rows as a CSV and a JSON file in ``folder`` (EXPORT_COLUMNS), named by time
    and thread so simultaneous batches never share one; exports over an hour old go first."""
    _prune(folder, max_age_s=3600)
    stem = f"captions-{time.strftime('%Y%m%d-%H%M%S')}-{threading.get_ident() % 10000:04d}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_atomic(folder / f"{stem}.csv", buf.getvalue())
    json_path = write_atomic(folder / f"{stem}.json", json.dumps(rows, indent=2, ensure_ascii=False))
    return csv_path, json_path


def _prune(folder: Path, max_age_s: float) -> None:
    now = time.time()
    for p in folder.glob("captions-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
        except OSError:
            pass
