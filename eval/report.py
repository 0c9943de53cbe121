"""report.html: where a model fails, in one self-contained file.

Written by ``python eval/run.py generate`` next to metrics.json. It holds the metric table
and one row per image (thumbnail, prediction, references, per-image CIDEr and BLEU-4),
ordered worst-first, with a switch to best-first. When the dataset records each image's scene
(the shapes set), the corpus scene accuracy sits beside the metrics and each row says whether
its caption names exactly the image's objects, and which it missed or added. Thumbnails are
inline base64 JPEGs and the switch is plain CSS (radio buttons + flex order), so the file opens anywhere, offline, with
no scripts. Long splits show the ``rows`` worst and ``rows`` best images.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioning.files import write_atomic
from captioning.vocabulary import style_of
from eval.scene import LABELS

THUMB_EDGE = 128
THUMB_QUALITY = 80
#: per-image columns, in order; the first one present is the sort key
ROW_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
table.kv td{padding:2px 12px 2px 0;vertical-align:top} table.kv td:first-child{color:#666}
table.metrics{border-collapse:collapse} table.metrics td,table.metrics th{border:1px solid #ddd;padding:4px 10px}
table.metrics td.v{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}
label{margin-right:16px;cursor:pointer}
.rows{display:flex;flex-direction:column;gap:6px}
#order-best:checked ~ .rows{flex-direction:column-reverse}
.row{display:grid;grid-template-columns:140px 1fr 150px;gap:12px;border-bottom:1px solid #eee;padding:6px 0}
.row img{max-width:128px;max-height:128px;display:block}
.pred{font-weight:600} .refs{margin:4px 0 0 0;padding-left:18px;color:#555}
.scores{font-variant-numeric:tabular-nums} .scores div{white-space:nowrap}
.gap{color:#777;font-style:italic;padding:8px 0}
"""


def thumbnail_data_uri(image, edge: int = THUMB_EDGE) -> str:
    """A small inline JPEG (``data:image/jpeg;base64,...``) of a PIL image."""
    im = image.convert("RGB")
    im.thumbnail((edge, edge))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=THUMB_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def sort_key_metric(per_image: dict) -> str | None:
    """The per-image metric rows are ordered by: CIDEr when scored, else the next present."""
    present = {name for scores in per_image.values() for name in scores}
    return next((m for m in ROW_METRICS if m in present), None)


def order_rows(rows: list[dict], metric: str | None) -> list[dict]:
    """Worst first by ``metric``; ties by the other row metrics, then by image id."""
    def key(row):
        scores = row["scores"]
        return tuple(scores.get(m, 0.0) for m in ([metric] if metric else []) + list(ROW_METRICS)) + (
            str(row["image_id"]),)
    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _header_items(record: dict) -> list[tuple[str, Any]]:
    """The key/value table at the top: model, dataset, decoding, provenance."""
    model = record.get("model") or {}
    dataset = record.get("dataset") or {}
    gen = record.get("generation") or {}
    return [
        ("model", model.get("id")),
        ("revision", model.get("resolved_revision") or model.get("revision")),
        ("adapter", model.get("adapter")),
        ("dataset", f"{dataset.get('source')} [{dataset.get('split')}]"),
        ("references hash", (dataset.get("hash") or "")[:16]),
        ("images", record.get("n_images")),
        ("caption transform of the references", dataset.get("caption_transform")
         if style_of(dataset.get("caption_transform")) else None),
        ("empty captions (each scored 0)", ", ".join(map(str, record.get("empty_captions") or [])) or None),
        ("images skipped (unreadable, not scored)", "; ".join(f"{s.get('file') or s.get('image_id')}: {s.get('reason')}"
                                                            for s in record.get("skipped_images") or []) or None),
        ("prompt", record.get("prompt") if record.get("prompt") is not None else "(none: unconditional)"),
        ("decoding", ", ".join(f"{k}={v}" for k, v in gen.items() if v is not None)),
        ("batch size / dtype / device", f"{record.get('batch_size')} / {record.get('dtype')} / "
                                        f"{record.get('device')}"),
        ("created", record.get("created")),
        ("command", record.get("command")),
    ]


def _metric_tables(record: dict) -> list[str]:
    """The corpus metric table and, for a dataset with scenes, the scene accuracy table."""
    esc = html.escape
    parts = ["</table><h2>Metrics (0-1 scale, as pycocoevalcap reports them)</h2>",
             '<table class="metrics"><tr><th>metric</th><th>value</th></tr>']
    unavailable = record.get("unavailable") or {}
    for name, value in (record.get("metrics") or {}).items():
        note = f' <span class="muted">({esc(unavailable.get(name, ""))})</span>' if value is None else ""
        parts.append(f'<tr><td>{esc(name)}</td><td class="v">{_fmt(value)}{note}</td></tr>')
    parts.append("</table>")
    scene = record.get("scene_accuracy")
    if scene:
        parts.append("<h2>Scene accuracy (shapes): does the caption name the image's objects?</h2>"
                     '<p class="muted">The dataset records every object in each image (colour, shape, size, '
                     "position); each caption is read in the shapes grammar and checked against it "
                     "(eval/scene.py). CIDEr can reward a caption that names the wrong objects; this cannot.</p>")
        parts.append('<table class="metrics"><tr><th>scene accuracy</th><th>value</th></tr>')
        for key, label in [*LABELS.items(), ("n_images", "images")]:
            if key in scene:
                note = ' <span class="muted">(no caption states one)</span>' if scene[key] is None else ""
                parts.append(f'<tr><td>{esc(label)}</td><td class="v">{_fmt(scene[key])}{note}</td></tr>')
        parts.append("</table>")
    return parts


def _image_row(row: dict) -> str:
    """One image's row: thumbnail, file name, prediction, references and its scores."""
    esc = html.escape
    thumb = f'<img alt="" src="{row["thumb"]}">' if row.get("thumb") else '<span class="muted">no image</span>'
    refs = "".join(f"<li>{esc(r)}</li>" for r in row["references"])
    scores = "".join(f"<div>{esc(m)} {_fmt(row['scores'].get(m))}</div>" for m in ROW_METRICS
                     if m in row["scores"])
    data = " ".join(f'data-{m.lower()}="{row["scores"][m]!r}"' for m in ROW_METRICS if m in row["scores"])
    wrong = ""
    if row.get("scene"):
        sc = row["scene"]
        data += f' data-scene-exact="{int(sc["exact"])}"'
        scores += (f'<div class="scene">scene exact {"yes" if sc["exact"] else "no"}</div>'
                   f"<div>objects P {_fmt(sc['object_precision'])}</div>"
                   f"<div>objects R {_fmt(sc['object_recall'])}</div>")
        wrong = "; ".join(f"{what}: {esc(', '.join(sc[key]))}" for key, what in
                          (("missing", "missing"), ("extra", "not in the image")) if sc.get(key))
        wrong = f'<div class="muted scene-wrong">{wrong}</div>' if wrong else ""
    return (f'<div class="row" data-image-id="{esc(str(row["image_id"]))}" {data}>'
            f"<div>{thumb}</div>"
            f'<div><div class="muted">{esc(str(row.get("file_name") or row["image_id"]))}</div>'
            f'<div class="pred">{esc(row["prediction"])}</div>{wrong}<ul class="refs">{refs}</ul></div>'
            f'<div class="scores">{scores}</div></div>')


def render_report(record: dict, rows: Sequence[dict], *, shown: int | None = None) -> str:
    """The HTML text. ``rows``: dicts with image_id, file_name, prediction, references,
    scores ({metric: value}), thumb (data URI or None) and, for a dataset with scenes, scene
    (eval.scene's per-image scores), already ordered worst-first.
    When ``shown`` is given and there are more than ``2 * shown`` rows, only the ``shown``
    worst and ``shown`` best are rendered."""
    esc = html.escape
    model = record.get("model") or {}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Caption eval: {esc(str(model.get('id')))}</title><style>{_CSS}</style></head><body>",
             f"<h1>Caption eval: {esc(str(model.get('id')))}</h1>", '<table class="kv">']
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in _header_items(record)
              if v not in (None, "")]
    parts += _metric_tables(record)

    rows = list(rows)
    metric = rows and next((m for m in ROW_METRICS if m in rows[0]["scores"]), None)
    hidden = 0
    if shown is not None and len(rows) > 2 * shown:
        hidden = len(rows) - 2 * shown
        rows = rows[:shown] + [None] + rows[-shown:]  # type: ignore[list-item]
    parts.append(f"<h2>Images ({record.get('n_images')}), ordered by {esc(str(metric or 'id'))}</h2>")
    parts.append('<input type="radio" name="order" id="order-worst" checked>'
                 '<label for="order-worst">worst first</label> '
                 '<input type="radio" name="order" id="order-best">'
                 '<label for="order-best">best first</label>')
    parts.append('<div class="rows" id="rows">')
    parts += [f'<div class="gap">... {hidden} images in between not shown ...</div>' if row is None
              else _image_row(row) for row in rows]
    parts.append("</div></body></html>")
    return "\n".join(parts) + "\n"


def build_rows(dataset, predictions: Sequence[dict], per_image: dict,
               scene_scores: dict | None = None) -> list[dict]:
    """One row per predicted image (no thumbnails yet), in dataset order; ``scene_scores``
    ({image_id: eval.scene's per-image scores}) adds each row's ``scene``."""
    caption_of = {repr(p["image_id"]): p["caption"] for p in predictions}
    rows = []
    for ex in dataset:
        key = repr(ex.image_id)
        if key not in caption_of:
            continue
        rows.append({"image_id": ex.image_id, "file_name": ex.file_name, "prediction": caption_of[key],
                     "references": list(ex.references), "scores": dict(per_image.get(ex.image_id, {})),
                     "example": ex, "thumb": None})
        if scene_scores is not None and ex.image_id in scene_scores:
            rows[-1]["scene"] = scene_scores[ex.image_id]
    return rows


def write_report(path: str | os.PathLike, record: dict, dataset, predictions: Sequence[dict],
                 result: dict, *, rows: int = 100, scene_scores: dict | None = None) -> Path:
    """Render report.html for a scored run and write it atomically.

    ``scene_scores``: eval.scene's per-image scores when the dataset records scenes (the
    corpus numbers come from ``record["scene_accuracy"]``). Only the rows that are shown get a
    thumbnail (images are decoded again here)."""
    per_image = result.get("per_image") or {}
    ordered = order_rows(build_rows(dataset, predictions, per_image, scene_scores), sort_key_metric(per_image))
    visible = ordered if len(ordered) <= 2 * rows else ordered[:rows] + ordered[-rows:]
    for row in visible:
        try:
            row["thumb"] = thumbnail_data_uri(row["example"].load_image())
        except Exception:
            row["thumb"] = None
    text = render_report(record, ordered, shown=rows)
    return write_atomic(path, text)
