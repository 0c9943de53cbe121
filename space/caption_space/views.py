"""The HTML and Markdown the Space shows: card lines, compare cards, the About tab, and the
/models rows. Names, captions and file names come from users and model repos, so every value
is escaped.

Card numbers stand side by side as comparable only when the records say so
(captioning.comparability.why_not_comparable); otherwise the reason is shown next to them. Every
score is printed by :func:`fmt` on the one scale the records use; About says which, once.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from captioning.comparability import measured_words, references_words, why_not_comparable
from captioning.portability import scrub_paths
from captioning.records import KIND_TRAINING

from .decoding import DEFAULTS
from .models import KIND_BASE, KIND_FINE_TUNE, KIND_UNTRAINED, ModelInfo, badge, description

ENV_SOURCE_URL = "CAPTION_SOURCE_URL"  # link to the toolkit's source, shown in About when set
#: the card metrics shown, (display name, metrics.json key)
SHOWN_METRICS = (("CIDEr", "CIDEr"), ("BLEU-4", "Bleu_4"))
#: said once (About), never beside each number
SCALE_NOTE = ("Scores are COCO caption metrics as pycocoevalcap reports them (not multiplied by 100), "
              "with three decimals: BLEU-4 lies between 0 and 1; CIDEr is unbounded above and often exceeds 1.")
_BADGE_COLORS = {KIND_FINE_TUNE: "#15803d", KIND_UNTRAINED: "#b45309"}


def esc(text: str) -> str:
    """``text`` safe inside gr.Error and Markdown (both render HTML)."""
    return html.escape(str(text), quote=False)


def fmt(value, digits: int = 3) -> str:
    """A score with ``digits`` decimals, or '' when there is none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def number(value) -> float | None:
    """A score as a JSON number (None when there is none)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def badge_html(info: ModelInfo) -> str:
    """The model's badge (:func:`caption_space.models.badge`) as a small outlined tag."""
    color = _BADGE_COLORS.get(info.kind, "#2563eb")
    return (f'<span class="model-badge badge-{info.kind}" style="display:inline-block;font-size:.75em;'
            f'font-weight:600;padding:0 .45em;border-radius:999px;border:1px solid {color};color:{color};'
            f'white-space:nowrap">{esc(badge(info))}</span>')


def basis_words(m: Mapping[str, Any]) -> str:
    """How card metrics (:meth:`ModelInfo.card_metrics`) were measured, in words:
    ``eval on test, 16 images, plain references``."""
    if not m:
        return ""
    bits = [measured_words({"measured": m.get("measured"), "split": m.get("split")})]
    if m.get("n_images"):
        bits.append(f"{m['n_images']} images")
    bits.append(references_words(m.get("caption_transform")))
    if m.get("precision") not in (None, "float32"):  # fp32 goes unsaid; int8 or bf16 numbers say so
        bits.append(f"at {m['precision']}")
    return ", ".join(bits)


def _scores(m: Mapping[str, Any]) -> str:
    return " · ".join(f"{name} {fmt(m.get(k))}" for name, k in SHOWN_METRICS if m.get(k) is not None)


def metrics_line(info: ModelInfo) -> str:
    """``CIDEr 0.812 · BLEU-4 0.254 (eval on test, 16 images, plain references)`` or '';
    validation numbers say ``measured during training on val``."""
    m = info.card_metrics()
    return f"{_scores(m)} ({basis_words(m)})" if m else ""


def _why(first: ModelInfo, info: ModelInfo) -> list[str] | None:
    """why_not_comparable for two models' cards; None when either has no numbers."""
    if not first.card_metrics() or not info.card_metrics():
        return None
    return why_not_comparable(first.scores(), info.scores())


def card_not_comparable(first: ModelInfo | None, info: ModelInfo) -> str | None:
    """Why ``info``'s card numbers cannot stand beside ``first``'s, with ``first`` named
    (``not comparable with Base's: different split: test vs val``); None when they can, or
    when either has no numbers."""
    if first is None or info is first:
        return None
    why = _why(first, info)
    return f"not comparable with {first.label}'s: {'; '.join(why)}" if why else None


def card_comparable(first: ModelInfo | None, info: ModelInfo) -> str | None:
    """``comparable with Base's (same: eval on test, 16 images, plain references)`` when the
    records say the two cards' numbers can stand side by side; None otherwise."""
    if first is None or info is first or _why(first, info) != []:
        return None
    return f"comparable with {first.label}'s (same: {basis_words(info.card_metrics())})"


def card_fields(first: ModelInfo | None, info: ModelInfo) -> dict[str, Any]:
    """What a compare result row says about ``info`` beside the caption: badge, description,
    card metrics and whether they compare with ``first``'s (the first card with numbers)."""
    return {"badge": badge(info), "description": description(info), "card_metrics": info.card_metrics() or None,
            "card_not_comparable": card_not_comparable(first, info), "card_comparable": card_comparable(first, info)}


def card_line(info: ModelInfo) -> str:
    """The Caption tab's one-line card: name and badge, family, what it is, card metrics and,
    for a fine-tune whose base is served too, whether their numbers compare."""
    bits = [f"**{esc(info.label)}** {badge_html(info)}", f"family: {info.family or '?'}"]
    what = description(info)
    if (info.kind != KIND_BASE or info.from_scratch) and what not in info.label:
        bits.append(esc(what))
    line = metrics_line(info)
    if line:
        bits.append(esc(line))
    scored = info.card_metrics().get("caption_transform")
    if line and info.trained_style and scored != info.trained_style:
        # a style fine-tune scored against other references looks worse than it captions
        bits.append(esc(f"trained on {info.trained_style}-style captions, scored against {references_words(scored)}"))
    base = info.paired_base
    if base is not None:
        why = card_not_comparable(base, info) or card_comparable(base, info)
        if why:
            bits.append(esc(why))
    return " · ".join(bits)


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
            card = (f'<div class="cmp-metrics" style="margin-top:.4em;font-size:.9em">card: {html.escape(_scores(m))}'
                    f" <span style='opacity:.7'>({html.escape(basis_words(m))})</span></div>")
            if r.get("card_not_comparable"):
                card += (f'<div class="cmp-warn" style="margin-top:.2em;font-size:.85em;color:#b45309">'
                         f'{html.escape(r["card_not_comparable"])}</div>')
            elif r.get("card_comparable"):
                card += (f'<div class="cmp-ok" style="margin-top:.2em;font-size:.85em;color:#15803d">'
                         f'{html.escape(r["card_comparable"])}</div>')
        else:
            card = '<div class="cmp-metrics" style="margin-top:.4em;font-size:.9em;opacity:.6">no card metrics</div>'
        what = " · ".join(html.escape(x) for x in (r.get("family") or "?", r.get("description") or "") if x)
        tag = (f' <span class="cmp-badge" style="font-size:.75em;font-weight:600;padding:0 .45em;'
               f'border-radius:999px;border:1px solid currentColor;opacity:.8">{html.escape(r["badge"])}</span>'
               if r.get("badge") else "")
        cards.append(
            '<div class="cmp-card" style="flex:1 1 0;min-width:180px;padding:.8em;border-radius:8px;'
            'border:1px solid var(--border-color-primary, #ccc)">'
            f'<div class="cmp-title" style="font-weight:600">{html.escape(r["name"])}{tag}</div>'
            f'<div style="font-size:.8em;opacity:.6">{what}</div>'
            f"{body}{card}</div>")
    return f'<div class="cmp-row" style="display:flex;gap:.8em;flex-wrap:wrap">{"".join(cards)}</div>'


def comparable_sets(infos: Sequence[ModelInfo]) -> dict[str, str]:
    """Model key -> a letter shared by exactly the models whose card numbers the records say
    are comparable (``A``, ``B``, ...); models without numbers are left out."""
    sets: list[ModelInfo] = []  # one model standing for each set
    out = {}
    for info in infos:
        if not info.card_metrics():
            continue
        n = next((j for j, rep in enumerate(sets) if why_not_comparable(rep.scores(), info.scores()) == []), None)
        if n is None:
            n = len(sets)
            sets.append(info)
        out[info.key] = chr(ord("A") + n) if n < 26 else f"S{n + 1}"
    return out


def models_table(infos: Sequence[ModelInfo], status: Mapping[str, str] | None = None, *,
                 ids: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One JSON-able row per model for the /models endpoint: id (``ids`` maps a model's key
    to the id the API addresses it by; the key when absent), display name, what it is (kind,
    badge, description, base: a served base by its id), card metrics as numbers (None when
    absent), how they were measured, the comparable set (rows with the same
    ``comparable_set`` can be compared) and, when ``status`` maps keys to it, its status."""
    ids = ids or {}
    sets = comparable_sets(infos)
    rows = []
    for info in infos:
        m = info.card_metrics()
        paired = info.paired_base
        # a served base by its id, another as its records name it, less where the server keeps it
        base = ids.get(paired.key, paired.key) if paired is not None else scrub_paths(info.base)
        rows.append({"model": ids.get(info.key, info.key), "name": info.label, "kind": info.kind, "badge": badge(info),
                     "description": description(info), "base": base, "family": info.family,
                     **{name: number(m.get(k)) for name, k in SHOWN_METRICS},
                     "measured": (m.get("measured") or None) if m else None,
                     "split": m.get("split"), "n_images": m.get("n_images") if isinstance(m.get("n_images"), int)
                     else None, "references": references_words(m.get("caption_transform")) if m else None,
                     "comparable_set": sets.get(info.key), "trained_style": info.trained_style,
                     "status": (status or {}).get(info.key)})
    return rows


def about_markdown(infos: Sequence[ModelInfo], api_model: str | None, compare_models: list[str]) -> str:
    """The About tab: models with what they are, their card metrics, how those were measured
    and which can be compared; links; the scale (said here once); the API."""
    sets = comparable_sets(infos)
    lines = ["## Models", "",
             "| model | what it is | family | CIDEr | BLEU-4 | measured on | set | repo |",
             "|---|---|---|---|---|---|---|---|"]
    basis: dict[str, str] = {}
    for info in infos:
        m = info.card_metrics()
        # a folder's name only: where the server keeps its files is nobody's business
        link = f"[{info.entry.id}]({info.url})" if info.url else f"`{Path(info.entry.id).name}` (local folder)"
        if info.key in sets:
            basis.setdefault(sets[info.key], basis_words(m))
        cells = [info.label, description(info), info.family or "?", fmt(m.get("CIDEr")), fmt(m.get("Bleu_4")),
                 basis_words(m), sets.get(info.key, ""), link]
        lines.append("| " + " | ".join(esc(c).replace("|", "\\|") if c is not link else c for c in cells) + " |")
    lines += ["", SCALE_NOTE]
    if len(basis) > 1:
        lines += ["", "Card numbers can be compared only within a set (column *set*): CIDEr and BLEU-4 depend on "
                  "the images, the reference captions and how the captions were generated.", ""]
        lines += [f"- set {k}: {esc(v)}" for k, v in basis.items()]
    elif basis and len(sets) > 1:
        lines += ["", f"Every card number here was measured the same way ({esc(next(iter(basis.values())))}): "
                  "they can be compared."]
    if any(m.get("measured") == KIND_TRAINING for m in (i.card_metrics() for i in infos)):
        lines += ["", "*Measured during training* numbers are the training run's own validation (the set it picked "
                  "its best checkpoint on): never comparable with an evaluation's."]
    lines.append("")
    source = os.environ.get(ENV_SOURCE_URL, "").strip()
    if source.startswith(("https://", "http://")):
        lines += [f"Source of this Space and the training toolkit: [{source}]({source})", ""]
    lines += ["## API and MCP", "",
              "Four endpoints are public: `/caption`, `/compare`, `/batch` and `/models` (see *Use via API* at "
              "the bottom of the page). Every parameter but the image has a default, and models are named by "
              "the ids `/models` lists:", "",
              "```python", "from gradio_client import Client, handle_file", "",
              f'client = Client("{os.environ.get("SPACE_ID", "OWNER/SPACE")}")'
              '  # or the local URL, e.g. "http://127.0.0.1:7860/"',
              'captions, timing = client.predict(handle_file("photo.jpg"), api_name="/caption")',
              f'captions, timing = client.predict(handle_file("photo.jpg"), model={api_model!r}, '
              f'max_new_tokens={DEFAULTS.max_new_tokens},',
              '                                  temperature=0.8, variations=3, seed=-1, api_name="/caption")',
              f'cards_html, results = client.predict(handle_file("photo.jpg"), models={compare_models!r},',
              '                                     api_name="/compare")',
              'models = client.predict(api_name="/models")',
              "```", "",
              "The same four are tools of this Space's MCP server (streamable HTTP at `/gradio_api/mcp/`, "
              "SSE at `/gradio_api/mcp/sse`), e.g. for an MCP client: "
              '`{"mcpServers": {"captioning": {"url": "https://OWNER-SPACE.hf.space/gradio_api/mcp/"}}}`.']
    return "\n".join(lines)
