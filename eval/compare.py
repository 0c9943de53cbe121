"""Several runs' metrics side by side: the core of ``eval/run.py compare``.

    python eval/run.py compare runs/base runs/lora-r8 release/metrics.json [--markdown]

Runs are comparable only when they scored the same references (same content hash: image ids
and captions) of the same split, with the same caption transform, number of images and
tokenization (every value is on the 0-1 scale): CIDEr-D takes its idf from the evaluated
set, so a different image set changes every CIDEr even for identical captions. Runs that
differ from the first run in any of these are marked and the reason is printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from captioning.errors import UserError
from captioning.records import METRICS, EvalRecord, not_comparable
from captioning.vocabulary import COCO_METRICS


@dataclass
class Run:
    """One run's eval record and the name it is shown under."""

    name: str
    eval: EvalRecord

    @property
    def path(self) -> Path:
        return self.eval.path

    @property
    def record(self) -> dict:
        return self.eval.doc


def load_run(path: str | Path) -> Run:
    """A run folder (holding metrics.json) or a metrics.json file."""
    path = Path(path)
    if path.is_dir() and not ((path / METRICS).exists() or (path / METRICS).is_symlink()):
        raise UserError(f"{path}: no metrics.json in this folder; pass a folder written by "
                        "`eval/run.py generate` or a metrics.json file")
    record = EvalRecord.read(path)
    file = record.path
    name = path.name if path.is_dir() else (file.parent.name if file.name == METRICS else file.stem)
    return Run(name=name or str(path), eval=record)


def comparability(runs: Sequence[Run]) -> list[str | None]:
    """For each run, None when it is comparable with the first run, else why not
    (captioning.records.not_comparable: references, split, caption transform, image count,
    tokenization)."""
    return [None] + [", ".join(not_comparable(runs[0].eval, run.eval)) or None for run in runs[1:]] if runs else []


def metric_names(runs: Sequence[Run], only: Sequence[str] | None = None) -> list[str]:
    seen: list[str] = []
    for run in runs:
        for name in run.record.get("metrics", {}):
            if name not in seen:
                seen.append(name)
    if only:
        missing = [m for m in only if m not in seen]
        if missing:
            raise UserError(f"--metrics {' '.join(missing)}: not in any of these runs (they have {', '.join(seen)})")
        return list(only)
    # COCO_METRICS' order first; other records' names follow in first-seen order
    return [m for m in COCO_METRICS if m in seen] + [m for m in seen if m not in COCO_METRICS]


def _model(record: dict) -> str:
    model = record.get("model") or {}
    name = str(model.get("id") or model.get("path") or "?")
    if model.get("adapter"):
        name += f" + {Path(str(model['adapter'])).name}"
    return name


def _dataset(record: dict) -> str:
    ds = record.get("dataset") or {}
    return f"{ds.get('source', '?')}:{ds.get('split') or '?'}"


def table_rows(runs: Sequence[Run], metrics: Sequence[str]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) with values formatted; a ``*`` marks non-comparable runs."""
    flags = comparability(runs)
    header = ["run", "model", "dataset", "n_images", "refs hash"] + list(metrics)
    rows, notes = [], []
    for run, why in zip(runs, flags):
        rec = run.record
        values = []
        for m in metrics:
            v = rec.get("metrics", {}).get(m)
            values.append("n/a" if v is None else f"{v:.4f}")
        mark = " *" if why else ""
        rows.append([run.name + mark, _model(rec), _dataset(rec), str(rec.get("n_images", "?")),
                     str((rec.get("dataset") or {}).get("hash") or "?")[:10]] + values)
        if why:
            notes.append(f"* {run.name}: not comparable with {runs[0].name} ({why})")
    return header, rows, notes


def format_compare(runs: Sequence[Run], metrics: Sequence[str] | None = None, *, markdown: bool = False) -> str:
    """The comparison table as terminal text or as a Markdown table."""
    names = metric_names(runs, metrics)
    header, rows, notes = table_rows(runs, names)
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        text = "\n".join(lines)
    else:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        fmt = lambda row: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(row, widths)))
        text = "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])
    text += "\n\nMetrics on the 0-1 scale pycocoevalcap reports."
    if notes:
        text += ("\n" + "\n".join(notes) +
                 "\nScores of runs on different image sets are not comparable (CIDEr-D's idf comes from the set).")
    return text
