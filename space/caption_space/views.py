"""The HTML and Markdown the Space shows: card lines, compare cards, the About tab. Names,
captions and file names come from users and model repos, so every value is escaped."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from captioning.records import LOCAL, METRICS, EvalRecord, not_comparable

from .models import ModelInfo

ENV_SOURCE_URL = "CAPTION_SOURCE_URL"  # link to the toolkit's source, shown in About when set


def esc(text: str) -> str:
    """``text`` safe inside gr.Error and Markdown (both render HTML)."""
    return html.escape(str(text), quote=False)


def fmt(value, digits: int = 3) -> str:
    """A score with ``digits`` decimals, or '' when there is none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def metrics_line(info: ModelInfo) -> str:
    """``CIDEr 0.812 · BLEU-4 0.254 (16 images, test split)`` or ''; a score against
    references rewritten in a fine-tune's style says so."""
    m = info.card_metrics()
    if not m:
        return ""
    parts = [f"{name} {fmt(m[k])}" for name, k in (("CIDEr", "CIDEr"), ("BLEU-4", "Bleu_4")) if m.get(k) is not None]
    styled = m.get("caption_transform", "none") != "none"
    where = ", ".join(x for x in (f"{m['n_images']} images" if m.get("n_images") else "",
                                  f"{m['split']} split" if m.get("split") else "",
                                  f"references in {m['caption_transform']} style" if styled else "") if x)
    return " · ".join(parts) + (f" ({where})" if where else "")


def card_line(info: ModelInfo) -> str:
    """The Caption tab's one-line card: name, family, card metrics, base model."""
    bits = [f"**{esc(info.label)}**", f"family: {info.family or '?'}"]
    line = metrics_line(info)
    if line:
        bits.append(line)
    if info.base:
        shown = "a local model" if info.base.startswith(LOCAL) else info.base
        bits.append(f"fine-tuned from {esc(shown)}")
    return " · ".join(bits)


def card_not_comparable(first: ModelInfo | None, info: ModelInfo) -> str | None:
    """Why ``info``'s card numbers cannot stand beside ``first``'s (captioning.records: other
    references, split, caption transform, image count, tokenization), with ``first``
    named; None when they can, or when either has no numbers."""
    if first is None or info is first or not info.metrics:
        return None
    why = not_comparable(EvalRecord(path=Path(METRICS), doc=first.metrics), EvalRecord(path=Path(METRICS),
                                                                                        doc=info.metrics))
    return f"not comparable with {first.label}'s: {', '.join(why)}" if why else None


def compare_html(results: list[dict]) -> str:
    """Side-by-side cards; every value escaped (captions and names are untrusted text)."""
    cards = []
    for r in results:
        m = r.get("card_metrics") or {}
        if r.get("error"):
            body = (f'<div class="cmp-error" style="color:#b91c1c;white-space:pre-wrap">'
                    f'{html.escape(html.unescape(r["error"]))}</div>')
        else:
            body = (f'<div class="cmp-caption" style="font-size:1.1em;margin:.4em 0;white-space:pre-wrap">'
                    f'{html.escape(r["caption"])}</div>'
                    f'<div class="cmp-latency" style="opacity:.75">{r["seconds"]:.2f} s'
                    + (f' (+ {r["load_seconds"]:.2f} s model load)' if r.get("load_seconds") else "")
                    + "</div>")
        if m:
            scores = " · ".join(f"{n} {fmt(m.get(k))}" for n, k in (("CIDEr", "CIDEr"), ("BLEU-4", "Bleu_4"))
                                if m.get(k) is not None)
            where = ", ".join(x for x in (f"{m['n_images']} images" if m.get("n_images") else "",
                                          f"{m['split']} split" if m.get("split") else "") if x)
            card = (f'<div class="cmp-metrics" style="margin-top:.4em;font-size:.9em">card: {html.escape(scores)}'
                    + (f" <span style='opacity:.7'>({html.escape(where)})</span>" if where else "") + "</div>")
            if r.get("card_not_comparable"):
                card += (f'<div class="cmp-warn" style="margin-top:.2em;font-size:.85em;color:#b45309">'
                         f'{html.escape(r["card_not_comparable"])}</div>')
        else:
            card = '<div class="cmp-metrics" style="margin-top:.4em;font-size:.9em;opacity:.6">no card metrics</div>'
        cards.append(
            '<div class="cmp-card" style="flex:1 1 0;min-width:180px;padding:.8em;border-radius:8px;'
            'border:1px solid var(--border-color-primary, #ccc)">'
            f'<div class="cmp-title" style="font-weight:600">{html.escape(r["name"])}</div>'
            f'<div style="font-size:.8em;opacity:.6">{html.escape(r.get("family") or "?")}</div>'
            f"{body}{card}</div>")
    return f'<div class="cmp-row" style="display:flex;gap:.8em;flex-wrap:wrap">{"".join(cards)}</div>'


def about_markdown(infos: Sequence[ModelInfo], api_model: str | None, compare_models: list[str]) -> str:
    """The About tab: models with their card metrics and links, and the API."""
    lines = ["## Models", "",
             "| model | family | CIDEr | BLEU-4 | images | split | dataset | repo |",
             "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        m = info.card_metrics()
        link = f"[{info.entry.id}]({info.url})" if info.url else f"`{info.entry.id}` (local folder)"
        cells = [info.label, info.family or "?", fmt(m.get("CIDEr")), fmt(m.get("Bleu_4")),
                 str(m.get("n_images") or ""), str(m.get("split") or ""), str(m.get("dataset") or ""), link]
        lines.append("| " + " | ".join(esc(c).replace("|", "\\|") if c is not link else c for c in cells) + " |")
    lines += ["", "Card metrics come from each model's `metrics.json` (COCO caption metrics, 0-1 scale); "
              "CIDEr depends on the evaluated set, so compare numbers measured on the same split and size.",
              ""]
    source = os.environ.get(ENV_SOURCE_URL, "").strip()
    if source.startswith(("https://", "http://")):
        lines += [f"Source of this Space and the training toolkit: [{source}]({source})", ""]
    lines += ["## API", "",
              "Every action is an API endpoint (see *Use via API* at the bottom of the page):", "",
              "```python", "from gradio_client import Client, handle_file", "",
              f'client = Client("{os.environ.get("SPACE_ID", "OWNER/SPACE")}")'
              '  # or the local URL, e.g. "http://127.0.0.1:7860/"',
              "captions, timing = client.predict(",
              f'    handle_file("photo.jpg"), {api_model!r}, "",  # image, model, prompt ("" = model default)',
              "    30, 1, 0.0, 1.0, 1, -1,  # max new tokens, beams, temperature (0 = greedy), top-p, "
              "variations, seed",
              '    api_name="/caption")',
              "cards_html, results = client.predict(",
              f'    handle_file("photo.jpg"), {compare_models!r},',
              '    30, 1, 0.0, 1.0, -1, api_name="/compare")',
              "table, csv_file, json_file, summary = client.predict(",
              f'    [handle_file("a.jpg"), handle_file("b.png")], {api_model!r},',
              '    30, 1, 0.0, 1.0, -1, api_name="/batch")',
              'models = client.predict(api_name="/models")',
              "```"]
    return "\n".join(lines)
