"""The images a model card links: metric badges (SVG) and the loss curve (PNG).

Badges print the same rounded numbers as the card's table and model-index
(:func:`fmt`, :data:`DIGITS`); both images are drawn here without a plotting library or
the network, so a card renders offline.
"""

from __future__ import annotations

import io
import re
from typing import Any

from captioning.vocabulary import COCO_METRICS

BADGES_DIR = "badges"
LOSS_CURVE = "loss_curve.png"
#: metrics shown as badges, in this order, when recorded
BADGE_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "SPICE")
DIGITS = 4  # every printed metric (table, badge, model-index) is rounded to this many decimals


def fmt(value: float) -> str:
    """How every metric value is printed: rounded to DIGITS decimals, on the 0-1 scale."""
    return f"{round(float(value), DIGITS):.{DIGITS}f}"


def metric_items(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """(name, value) of every numeric metric in an eval record, in the card's order (None,
    i.e. not computed, is left out)."""
    vals = metrics.get("metrics", {})
    names = [m for m in COCO_METRICS if m in vals] + sorted(m for m in vals if m not in COCO_METRICS)
    return [(m, float(vals[m])) for m in names if isinstance(vals[m], (int, float)) and not isinstance(vals[m], bool)]


def _text_width(text: str) -> int:
    # Verdana 11 px: capitals and digits ~7.5 px, other glyphs ~6.2 px, plus 5 px padding each side
    return int(sum(7.5 if c.isupper() or c.isdigit() else 6.2 for c in text)) + 10


def badge_svg(label: str, value: str, color: str = "#4c1") -> str:
    """A flat shields-style badge as a self-contained SVG (renders on the Hub and offline)."""
    from xml.sax.saxutils import escape

    lw, vw = _text_width(label), _text_width(value)
    w = lw + vw
    label, value = escape(label), escape(value)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" '
        f'aria-label="{label}: {value}"><title>{label}: {value}</title>'
        f'<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        f'<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{w}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{vw}" height="20" fill="{color}"/><rect width="{w}" height="20" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{lw / 2:.1f}" y="14">{label}</text><text x="{lw + vw / 2:.1f}" y="14">{value}</text></g></svg>\n'
    )


def _badge_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + ".svg"


def make_badges(metrics: dict[str, Any] | None) -> list[dict[str, str]]:
    """Badge descriptors {label, value, file, svg} from metrics.json (same rounding as the table)."""
    if not metrics:
        return [{"label": "eval", "value": "not measured", "file": f"{BADGES_DIR}/eval.svg",
                 "svg": badge_svg("eval", "not measured", "#9f9f9f")}]
    vals = dict(metric_items(metrics))
    split = (metrics.get("dataset") or {}).get("split", "?")
    n = metrics.get("n_images")
    out = []
    for m in BADGE_METRICS:
        if m in vals:
            value = fmt(vals[m])
            out.append({"label": m, "value": value, "file": f"{BADGES_DIR}/{_badge_name(m)}",
                        "svg": badge_svg(m, value)})
    scope = f"{split}, n={n}"
    out.append({"label": "eval set", "value": scope, "file": f"{BADGES_DIR}/eval_set.svg",
                "svg": badge_svg("eval set", scope, "#007ec6")})
    return out


def loss_curve_png(loss: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 320) -> bytes:
    """The loss curve as a small PNG drawn with PIL (no plotting library needed)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    left, right, top, bottom = 60, 20, 30, 40
    pts = [p for series in loss.values() for p in series]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or max(abs(y1) * 0.05, 1e-3)
    y0, y1 = (max(y0 - pad, 0.0) if y0 >= 0 else y0 - pad), y1 + pad  # a loss axis need not go below 0

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                top + (y1 - y) / (y1 - y0) * (height - top - bottom))

    d.rectangle([left, top, width - right, height - bottom], outline="#888")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        _, yy = px(x0, yv)
        d.line([left, yy, width - right, yy], fill="#eee")
        d.text((5, yy - 7), f"{yv:.3g}", fill="#333", font=font)
    for xv in (x0, (x0 + x1) / 2, x1):
        xx, _ = px(xv, y0)
        d.text((xx - 10, height - bottom + 5), f"{xv:.0f}", fill="#333", font=font)
    d.text((width / 2 - 15, height - 18), "step", fill="#333", font=font)
    colors = {"train": "#1f77b4", "eval": "#ff7f0e"}
    legend_x = left + 10
    for name, series in loss.items():
        if not series:
            continue
        c = colors.get(name, "#2ca02c")
        pts_px = [px(x, y) for x, y in series]
        if len(pts_px) > 1:
            d.line(pts_px, fill=c, width=2)
        for x, y in pts_px if name == "eval" or len(pts_px) == 1 else []:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
        d.line([legend_x, 15, legend_x + 20, 15], fill=c, width=3)
        d.text((legend_x + 25, 8), f"{name} loss", fill="#333", font=font)
        legend_x += 110
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
