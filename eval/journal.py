"""The resume records of ``eval/run.py generate``: a journal per process, and the check that a
finished run in ``--out`` was made with the same settings.

Each finished batch is appended (and fsynced) to ``OUT/predictions.partial.jsonl`` (process
``r`` of a sharded run: ``predictions.partial.rank{r}.jsonl``). The first line holds a
fingerprint of every setting that decides the captions, so a restart with other settings is
refused instead of mixing predictions; a line torn by a kill is cut off on the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.files import read_json_file
from captioning.records import METRICS, EvalRecord

JOURNAL = "predictions.partial.jsonl"
JOURNAL_VERSION = 1
PREDICTIONS = "predictions.json"


def json_ids(ids: list) -> list:
    """``ids`` as they come back from a journal line: compare ids in their JSON form."""
    return json.loads(json.dumps(ids))


def journal_path(out: Path, rank: int) -> Path:
    """Each process appends to its own journal; the main process's is the plain name."""
    return out / (JOURNAL if rank == 0 else f"predictions.partial.rank{rank}.jsonl")


def journal_files(out: Path) -> list[Path]:
    """Every process's journal in ``out``."""
    return sorted(out.glob("predictions.partial*.jsonl"))


@dataclass
class Journal:
    """A parsed journal: its header, finished batches and the length of its intact prefix."""

    path: Path
    header: dict | None
    batches: dict[int, dict]
    intact_bytes: int


def read_journal(path: Path, log=None) -> Journal:
    """Parse a journal. Everything up to the first line that does not parse is kept; that line
    and the ones after it are cut off on the next start and their images captioned again. A
    torn last line is what a kill leaves; damage further up (a disk error, an edit) is said
    through ``log``. Finished captions are never thrown away for a damaged line after them."""
    if not path.is_file():
        raise UserError(f"{path} is not a file; move it away (it is not a journal this toolkit wrote)")
    data = path.read_bytes()
    header, batches, pos = None, {}, 0
    lines = data.split(b"\n")
    for k, raw in enumerate(lines):
        last = k == len(lines) - 1
        if last:  # no newline after it: empty, or torn by a kill
            break
        try:
            rec = json.loads(raw.decode("utf-8"))
            if header is not None and not (isinstance(rec, dict) and isinstance(rec.get("batch"), int)):
                raise ValueError("not a batch record")
        except (UnicodeDecodeError, ValueError):
            if not (k == len(lines) - 2 and not lines[-1]) and header is not None:
                # not the torn write of a kill (that is the last line): say what is captioned again
                (log or (lambda m: print(m, file=sys.stderr)))(
                    f"note: {path}: line {k + 1} is damaged; the {len(batches)} batches before it are kept, the "
                    "rest are captioned again")
            break
        if header is None:
            if not isinstance(rec, dict) or rec.get("journal") != JOURNAL_VERSION or "fingerprint" not in rec:
                raise UserError(f"{path}: not a journal written by eval/run.py generate; pass --overwrite or "
                                "another --out")
            header = rec
        else:
            batches[int(rec["batch"])] = rec
        pos += len(raw) + 1
    return Journal(path, header, batches, pos)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two settings dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def fingerprint(settings: dict) -> str:
    """sha256 of the canonical JSON of the settings that decide the captions."""
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def refuse_other_settings(where: str, old: dict | None, new: dict) -> UserError:
    changes = _diff(old or {}, new)
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    return UserError(f"{where} was made with other settings ({shown or 'unknown settings'}): re-run with the "
                     "same settings to resume, or pass --overwrite or another --out")


def open_journal(path: Path, journals: list[Journal], fp: str, settings: dict):
    """This process's journal, open for appending: a line torn by a kill is cut off, and a new
    journal (or one that never got its header) starts with the header."""
    old = next((j for j in journals if j.path == path), None)
    f = open(path, "ab")
    if old is not None and old.intact_bytes < path.stat().st_size:
        f.truncate(old.intact_bytes)
    if old is None or old.header is None:
        f.truncate(0)
        append(f, {"journal": JOURNAL_VERSION, "fingerprint": fp, "settings": settings})
    return f


def append(f, rec: dict) -> None:
    """Append one JSON line and make it durable before the next batch starts."""
    f.write((json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


def _check_batch(rec: dict, ids: list, path: Path) -> list[str]:
    captions = rec.get("captions")
    if rec.get("image_ids") != ids or not isinstance(captions, list) or len(captions) != len(ids):
        raise UserError(f"{path}: batch {rec.get('batch')} holds other images than this split's batch; the "
                        "dataset changed since: pass --overwrite or another --out")
    return captions


def load_done(out: Path, fp: str, settings: dict, batches: list[list]) -> tuple[dict[int, list], list[Journal]]:
    """The batches every journal in ``out`` holds (batch index -> its journal entries), and the
    journals; a journal of other settings, or of other images, is refused."""
    journals = [read_journal(p) for p in journal_files(out)]
    done: dict[int, list] = {}
    for j in journals:
        if j.header is None:
            continue
        if j.header["fingerprint"] != fp:
            raise refuse_other_settings(f"the unfinished run in {j.path}", j.header.get("settings"), settings)
        for b, rec in j.batches.items():
            if not 0 <= b < len(batches):
                raise UserError(f"{j.path}: batch {b} is outside this split; pass --overwrite or another --out")
            done.setdefault(b, _check_batch(rec, batches[b], j.path))
    return done, journals




def finished_run(out: Path, fp: str, settings: dict, ids: Sequence) -> tuple[list[dict], list[dict]] | None:
    """(predictions, skipped images) of a finished run in ``out`` made with the same settings
    (None: no run).

    A finished run with other settings is refused: overwriting it silently would lose it.
    """
    metrics_path, preds_path = out / METRICS, out / PREDICTIONS
    if not metrics_path.exists() and not preds_path.exists():
        return None
    old = None
    if metrics_path.is_file():
        try:
            old = EvalRecord.read(metrics_path).doc
        except UserError:  # unreadable, or not an eval record: treated as a run this command did not make
            old = None
    old_fp, old_settings = _recorded_fingerprint(old)
    if old_fp != fp or not preds_path.is_file():
        what = f"{out} holds a finished run"
        if old_fp is not None and old_fp != fp:
            raise refuse_other_settings(what, old_settings, settings)
        raise UserError(f"{what} (predictions.json / metrics.json) that this command did not make: "
                        "pass --overwrite or another --out")
    try:
        predictions = read_json_file(preds_path)
    except UserError as e:
        raise UserError(f"{e}; or pass --overwrite") from None
    skipped = (old.get("skipped_images") or []) if isinstance(old, dict) else []
    not_scored = {json.dumps(s.get("image_id")) for s in skipped}
    got = [p.get("image_id") for p in predictions] if isinstance(predictions, list) else None
    if got != [i for i in json_ids(list(ids)) if json.dumps(i) not in not_scored]:
        raise UserError(f"{preds_path} does not match this split's images: pass --overwrite or another --out")
    return predictions, skipped


def _recorded_fingerprint(record: Any) -> tuple[str | None, dict | None]:
    """(sha256, settings) a finished run recorded in its metrics.json."""
    block = record.get("fingerprint") if isinstance(record, dict) else None
    if isinstance(block, dict) and isinstance(block.get("sha256"), str):
        return block["sha256"], block.get("settings") if isinstance(block.get("settings"), dict) else None
    return None, None
