"""Model cards: a Jinja template from model_cards/ plus data, rendered offline.

    release card --model releases/style --metrics runs/eval/metrics.json --out releases/style/README.md

:func:`collect_inputs` reads what a card is made of (the model folder's config,
train_config.yaml, metrics.json from ``eval/run.py generate``, merge_check.json,
the training logs); :func:`render_card` is pure: inputs in, README text and the
files it links (metric badges as SVG, the loss curve as PNG) out; :func:`write_card`
writes them. Front matter (license, base_model, datasets, pipeline_tag,
library_name, tags, model-index) goes through huggingface_hub's ModelCardData, and
the badges, the metrics table and model-index are all printed from the same
rounded numbers. What is missing is shown as "not measured", never guessed.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.records import (
    KIND_MERGE_CHECK,
    KIND_RELEASE,
    MERGE_CHECK,
    RELEASE,
    EvalRecord,
    TrainConfigRecord,
    read_record,
)

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "model_cards"
DEFAULT_TEMPLATE = "model_card"
BADGES_DIR = "badges"
LOSS_CURVE = "loss_curve.png"
#: metrics shown as badges, in this order, when recorded
BADGE_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "SPICE")
METRIC_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
DIGITS = 4  # every printed metric (table, badge, model-index) is rounded to this many decimals

#: licences of well-known base models, used only when the base's own card cannot be read
KNOWN_LICENSES = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolVLM-500M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolVLM-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolVLM-256M-Base": "apache-2.0",
    "HuggingFaceTB/SmolVLM-500M-Base": "apache-2.0",
    "Salesforce/blip-image-captioning-base": "bsd-3-clause",
    "Salesforce/blip-image-captioning-large": "bsd-3-clause",
}
#: the licence of weights this toolkit's random-model factory made (the project's own)
FACTORY_LICENSE = "apache-2.0"


@dataclass
class CardInputs:
    """Everything a card is rendered from (plain data; :func:`collect_inputs` fills it)."""

    repo_id: str
    family: str | None = None
    is_adapter: bool = False
    base_model: str | None = None
    base_revision: str | None = None
    license: str | None = None
    license_source: str | None = None
    metrics: dict[str, Any] | None = None
    train_config: dict[str, Any] | None = None
    merge_check: dict[str, Any] | None = None
    #: {"train": [(step, loss)], "eval": [(step, loss)]}
    loss: dict[str, list[tuple[float, float]]] | None = None
    #: base, its base, ... (see base_lineage); ends with "captioning.factory" for random weights
    lineage: list[str] = field(default_factory=list)
    loss_source: str | None = None
    n_params: int | None = None
    dtype: str | None = None
    language: list[str] = field(default_factory=lambda: ["en"])
    #: the checkpoint ships its own model code (config.json auto_map): snippets need trust_remote_code
    remote_code: bool = False
    #: weights fingerprint of the base (captioning.records); the card names a local base by it
    base_fingerprint: str | None = None
    #: the base is a local folder with no Hub id: named "a local model" and its fingerprint
    base_local: bool = False


# ------------------------------------------------------------------ reading
def looks_like_hub_id(name: str | None) -> bool:
    """``org/name`` that is not a local path."""
    if not name:
        return False
    from captioning.loading import looks_local

    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not looks_local(name)


def read_loss_history(folder: str | Path) -> tuple[dict[str, list[tuple[float, float]]] | None, str | None]:
    """Training/eval loss per step from a training output folder.

    Reads TensorBoard event files under ``logs/`` (tags ``train/loss``, ``eval/loss``), else
    the newest ``trainer_state.json`` (its ``log_history``). Returns (None, None) when
    neither holds a loss.
    """
    folder = Path(folder)
    logs = folder / "logs"
    if logs.is_dir() and any(logs.rglob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

        mux = EventMultiplexer(size_guidance={"scalars": 0})
        mux.AddRunsFromDirectory(str(logs))
        mux.Reload()
        out: dict[str, list[tuple[float, float]]] = {"train": [], "eval": []}
        for run, tags in mux.Runs().items():
            for tag in tags.get("scalars", []):
                key = {"train/loss": "train", "loss": "train", "eval/loss": "eval", "eval_loss": "eval"}.get(tag)
                if key:
                    out[key] += [(float(e.step), float(e.value)) for e in mux.Scalars(run, tag)]
        if out["train"] or out["eval"]:
            return {k: sorted(v) for k, v in out.items()}, "logs/ (TensorBoard)"
    states = sorted(folder.glob("checkpoints/*/trainer_state.json"), key=lambda p: p.stat().st_mtime)
    states += [folder / "trainer_state.json"] if (folder / "trainer_state.json").is_file() else []
    if states:
        state = json.loads(states[-1].read_text())
        hist = state.get("log_history", [])
        out = {"train": [(float(h["step"]), float(h["loss"])) for h in hist if "loss" in h and "step" in h],
               "eval": [(float(h["step"]), float(h["eval_loss"])) for h in hist if "eval_loss" in h and "step" in h]}
        if out["train"] or out["eval"]:
            return out, str(states[-1].relative_to(folder))
    return None, None


def _count_params(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files (from their headers only)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                total += math.prod(st.get_slice(k).get_shape())
    return total


FACTORY = "captioning.factory"


def base_lineage(base: str | None, train_config: dict | None, max_hops: int = 8) -> list[str]:
    """The chain of bases behind a model: its base, that folder's own base (read from its
    train_config.yaml), ... ending at a hub id, an unrecorded folder, or ``captioning.factory``
    (random weights). A fine-tune of a fine-tune (the demo's style LoRA) is traced to its root."""
    chain: list[str] = []
    cfg = train_config
    name = base
    for _ in range(max_hops):
        model_cfg = (cfg or {}).get("model") if isinstance((cfg or {}).get("model"), dict) else {}
        if not name and model_cfg.get("factory"):
            chain.append(FACTORY)
            break
        name = name or model_cfg.get("name_or_path")
        if not name or name in chain:
            break
        chain.append(str(name))
        record = TrainConfigRecord.find(name) if Path(name).is_dir() else None
        if record is None:
            break
        cfg = record.doc
        name = None
    return chain


def base_license(base: str | None, train_config: dict | None) -> tuple[str | None, str]:
    """(licence id, where it came from) of the base model; (None, reason) when unknown.

    Walks :func:`base_lineage`: a README front matter in a local base folder, then a table of
    well-known bases, then random factory weights (this toolkit's licence). Never asks the
    network: a card must render offline.
    """
    chain = base_lineage(base, train_config)
    if not chain:
        return None, "the base model is not recorded"
    for name in chain:
        readme = Path(name) / "README.md"
        if readme.is_file():
            from huggingface_hub import ModelCard

            lic = ModelCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.get("license")
            if lic:
                return str(lic), f"{readme} front matter"
        if name in KNOWN_LICENSES:
            return KNOWN_LICENSES[name], f"the published licence of {name}"
    if chain[-1] == FACTORY:
        return FACTORY_LICENSE, "random initial weights from captioning.factory, this toolkit's licence"
    return None, f"not found for {chain[-1]}: check its model card and pass --license"


def collect_inputs(model_dir: str | Path, *, repo_id: str | None = None, metrics: str | Path | None = None,
                   train_config: str | Path | None = None, logs: str | Path | None = None,
                   license: str | None = None, language: list[str] | None = None) -> CardInputs:
    """Gather a card's inputs from a release (or training output) folder and optional files.

    ``metrics``/``train_config`` default to the files inside ``model_dir``; ``logs`` (a
    training output folder) defaults to ``model_dir`` itself.
    """
    from captioning.families import family_for_config, get_family

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such folder (pass a release or training output folder)")
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: no config.json or adapter_config.json; pass a model folder")
    tc_record = TrainConfigRecord.read(train_config) if train_config else TrainConfigRecord.find(model_dir)
    tc = tc_record.doc if tc_record else None
    found = EvalRecord.find(model_dir)  # a release folder's; a training output's metrics.json is not one
    mt = EvalRecord.read(metrics, what="--metrics").doc if metrics else (found.doc if found else None)
    merge_check = read_record(model_dir, KIND_MERGE_CHECK) if (model_dir / MERGE_CHECK).is_file() else None

    model_cfg = (tc or {}).get("model") if isinstance((tc or {}).get("model"), dict) else {}
    base = revision = None
    if merge_check:
        base, revision = merge_check.get("base"), merge_check.get("base_revision")
    if is_adapter:
        base = base or json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    base = base or model_cfg.get("name_or_path")
    revision = revision or model_cfg.get("revision")

    family = model_cfg.get("family") if model_cfg.get("family") not in (None, "auto") else None
    dtype = None
    remote_code = False
    if (model_dir / "config.json").is_file():
        cfg = json.loads((model_dir / "config.json").read_text())
        dtype = cfg.get("dtype") or cfg.get("torch_dtype")
        remote_code = bool(cfg.get("auto_map"))
        if family is None:
            from types import SimpleNamespace

            family = family_for_config(SimpleNamespace(model_type=cfg.get("model_type"))).name
    elif family is None and model_cfg.get("factory"):
        family = get_family(model_cfg["factory"].get("family", "idefics3")).name

    lic, lic_src = (license, "--license") if license else base_license(base, tc)
    loss, loss_src = read_loss_history(logs) if logs else read_loss_history(model_dir)
    lineage = base_lineage(base, tc)
    base_fp = (merge_check or {}).get("base_fingerprint")
    base_local = False
    manifest = read_record(model_dir, KIND_RELEASE) if (model_dir / RELEASE).is_file() else None
    if manifest:  # a release folder pushed again: what it was made from is recorded, not on this machine
        mb = manifest.get("base") or {}
        base, base_fp, base_local = mb.get("id"), mb.get("fingerprint"), bool(mb.get("local"))
        lineage = manifest.get("lineage") or lineage
        if not license:
            lic, lic_src = manifest.get("license"), manifest.get("license_source") or lic_src
        if loss is None and manifest.get("loss"):
            loss = {k: [tuple(p) for p in v] for k, v in manifest["loss"].items()}
            loss_src = manifest.get("loss_source")
    return CardInputs(repo_id=repo_id or str(model_dir), family=family, is_adapter=is_adapter, base_model=base,
                      base_revision=revision, license=lic, license_source=lic_src, metrics=mt, train_config=tc,
                      merge_check=merge_check, loss=loss, loss_source=loss_src, n_params=_count_params(model_dir),
                      dtype=dtype, language=language or ["en"], lineage=lineage,
                      remote_code=remote_code, base_fingerprint=base_fp, base_local=base_local)


# ------------------------------------------------------------------ pieces
def fmt(value: float) -> str:
    """How every metric value is printed: rounded to DIGITS decimals, on the 0-1 scale."""
    return f"{round(float(value), DIGITS):.{DIGITS}f}"


def _metric_items(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    vals = metrics.get("metrics", {})
    names = [m for m in METRIC_ORDER if m in vals] + sorted(m for m in vals if m not in METRIC_ORDER)
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
    vals = dict(_metric_items(metrics))
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


def usage_snippet(family: str | None, major: int, model_id: str, prompt: str | None, *, image: str = "photo.jpg",
                  max_new_tokens: int = 30, adapter_of: str | None = None, remote_code: bool = False) -> str:
    """The Python code a card shows for transformers ``major`` (4 or 5).

    The same text is what tests/test_release_compat.py runs under both majors.
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "usage")),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    kind = "blip" if family == "blip" else "chat"
    auto = "AutoModelForImageTextToText" if major >= 5 else "AutoModelForVision2Seq"
    return env.get_template(f"{kind}.py.j2").render(
        auto_class=auto, model_id=model_id, image=image, prompt=prompt, max_new_tokens=max_new_tokens,
        adapter_of=adapter_of, major=major, remote=", trust_remote_code=True" if remote_code else "").strip() + "\n"


def _training_rows(tc: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's training table: every setting that shapes what the model says, read from
    train_config.yaml (the fully resolved config: a key it lacks shows as "not recorded",
    never as a default guessed here)."""
    def sec(name: str) -> dict:
        v = tc.get(name)
        return v if isinstance(v, dict) else {}

    def v(section: dict, key: str) -> Any:
        return section.get(key, "not recorded")

    m, lo, q, d, o, ev = sec("model"), sec("lora"), sec("quantization"), sec("data"), sec("optim"), sec("eval")
    rows: list[tuple[str, str]] = []
    if m.get("factory"):
        f = m["factory"]
        rows.append(("base model", f"random {v(f, 'size')} {v(f, 'family')} from captioning.factory "
                                   f"(seed {v(f, 'seed')})"))
    elif m.get("name_or_path"):
        rows.append(("base model", f"`{m['name_or_path']}`" + (f" @ {m['revision']}" if m.get("revision") else "")))
    if m.get("family"):
        rows.append(("family", str(m["family"])))
    if lo.get("enabled"):
        tgt = lo.get("target_modules") or "the family's language-model attention + MLP projections"
        extras = (", DoRA" if lo.get("use_dora") else "") + (", rsLoRA" if lo.get("use_rslora") else "")
        rows.append(("method", f"LoRA r={v(lo, 'r')}, alpha={v(lo, 'alpha')}, dropout={v(lo, 'dropout')}{extras}"))
        rows.append(("LoRA targets", f"`{tgt}`" if isinstance(tgt, str) else ", ".join(map(str, tgt))))
    elif lo:
        rows.append(("method", "full fine-tuning"))
    if "freeze_vision" in m:
        rows.append(("vision tower", "frozen" if m["freeze_vision"] else "trained"))
    if q.get("load_in_4bit") or q.get("load_in_8bit"):
        rows.append(("quantization", f"4-bit {v(q, 'quant_type')}" if q.get("load_in_4bit") else "8-bit"))
    if d.get("source"):
        rows.append(("training data", f"`{d['source']}` [{v(d, 'train_split')}]"
                     + (f", at most {d['max_train_samples']} images" if d.get("max_train_samples") else "")))
    if d.get("caption_transform") not in (None, "none"):
        rows.append(("caption transform", f"`{d['caption_transform']}`: every target caption rewritten before "
                                          "training, so the model writes in that style"))
    if "references" in d:
        rows.append(("targets", "one reference per image per epoch, sampled" if d["references"] == "sample"
                     else "every reference of each image"))
    if "prompt" in d:
        rows.append(("prompt", repr(d["prompt"]) if d["prompt"] is not None else "the family default"))
    if d.get("image_longest_edge") is not None or d.get("image_splitting") is not None:
        split = d.get("image_splitting")
        rows.append(("image size", f"longest edge {d.get('image_longest_edge') or 'default'}, splitting "
                                   f"{'default' if split is None else split}"))
    if o:
        steps = f"{o['max_steps']} steps" if o.get("max_steps") else f"{v(o, 'epochs')} epochs"
        rows += [("schedule", f"{steps}, batch {v(o, 'batch_size')} x {v(o, 'grad_accum')} accumulation"),
                 ("optimizer", f"{v(o, 'optimizer')}, lr {v(o, 'lr')}, {v(o, 'scheduler')} schedule, weight decay "
                               f"{v(o, 'weight_decay')}"),
                 ("precision", str(v(o, "precision"))), ("seed", str(v(o, "seed")))]
        if o.get("label_smoothing"):
            rows.append(("label smoothing", str(o["label_smoothing"])))
    if ev.get("metric_for_best"):
        rows.append(("model selection", f"best {ev['metric_for_best']} on the validation split"))
    return rows


def _dataset_label(metrics: dict[str, Any]) -> tuple[str, str]:
    """(model-index dataset type, display name) for the evaluated dataset."""
    ds = metrics.get("dataset") or {}
    src = str(ds.get("source") or ds.get("id") or ds.get("path") or "unknown")
    if looks_like_hub_id(src):
        return src, src
    name = Path(src.rstrip("/")).name or src
    return name, f"{name} (local)"


def card_data(inputs: CardInputs):
    """The YAML front matter as huggingface_hub ModelCardData (model-index from metrics.json)."""
    from huggingface_hub import EvalResult, ModelCardData

    tags = ["image-captioning", "vision-language"] + ([inputs.family] if inputs.family else [])
    if inputs.is_adapter or inputs.merge_check:
        tags.append("lora")
    datasets = []
    train_src = ((inputs.train_config or {}).get("data") or {}).get("source")
    if looks_like_hub_id(train_src):
        datasets.append(train_src)
    results = []
    if inputs.metrics:
        dtype_, dname = _dataset_label(inputs.metrics)
        if looks_like_hub_id(dtype_) and dtype_ not in datasets:
            datasets.append(dtype_)
        ds = inputs.metrics.get("dataset") or {}
        args = {"n_images": inputs.metrics.get("n_images")}
        if ds.get("hash"):
            args["content_hash"] = ds["hash"]
        if ds.get("caption_transform") not in (None, "none"):
            args["caption_transform"] = ds["caption_transform"]  # references rewritten in the model's style
        for name, value in _metric_items(inputs.metrics):
            results.append(EvalResult(
                task_type="image-to-text", task_name="Image captioning", dataset_type=dtype_, dataset_name=dname,
                dataset_split=ds.get("split"), dataset_args=args, metric_type=name.lower(), metric_name=name,
                metric_value=round(value, DIGITS)))
    license = inputs.license or "other"
    extra = {}
    if inputs.license is None:
        extra["license_name"] = "unknown"
    if looks_like_hub_id(inputs.base_model):
        # adapter: a peft adapter repo; finetune: merged LoRA or full fine-tune (not "merge": that is several models)
        extra["base_model_relation"] = "adapter" if inputs.is_adapter else "finetune"
    return ModelCardData(
        license=license, base_model=inputs.base_model if looks_like_hub_id(inputs.base_model) else None,
        datasets=datasets or None, language=inputs.language, pipeline_tag="image-text-to-text",
        library_name="peft" if inputs.is_adapter else "transformers", tags=tags,
        model_name=inputs.repo_id.split("/")[-1], eval_results=results or None, **extra)


def _prompt(inputs: CardInputs) -> str | None:
    if inputs.metrics and "prompt" in inputs.metrics:
        return inputs.metrics["prompt"]
    data = (inputs.train_config or {}).get("data") or {}
    if "prompt" in data and data["prompt"] is not None:
        return data["prompt"]
    if inputs.family:
        from captioning.families import get_family

        try:
            return get_family(inputs.family).default_prompt
        except UserError:
            return None
    return None


def render_card(inputs: CardInputs, template: str = DEFAULT_TEMPLATE) -> tuple[str, dict[str, bytes]]:
    """README.md text and the files it links ({relative path: bytes}); pure, offline."""
    from huggingface_hub import ModelCard

    path = Path(template)
    if not path.is_file():
        path = TEMPLATES_DIR / f"{template}.md.j2"
    if not path.is_file():
        names = sorted(p.name[:-len('.md.j2')] for p in TEMPLATES_DIR.glob("*.md.j2"))
        raise UserError(f"--template {template}: no such template in {TEMPLATES_DIR} ({', '.join(names)}) "
                        "and no such file")
    files: dict[str, bytes] = {}
    badges = make_badges(inputs.metrics)
    for b in badges:
        files[b["file"]] = b["svg"].encode()

    not_measured: list[str] = []
    evaluation = None
    if inputs.metrics:
        m = inputs.metrics
        ds = m.get("dataset") or {}
        rows = [{"name": k, "value": fmt(v)} for k, v in _metric_items(m)]
        unavailable = [{"name": k, "reason": str(r)} for k, r in (m.get("unavailable") or {}).items()]
        recorded = {k for k, _ in _metric_items(m)}
        unavailable += [{"name": k, "reason": "not computed"} for k, v in (m.get("metrics") or {}).items()
                        if v is None and k not in recorded and k not in (m.get("unavailable") or {})]
        evaluation = {"rows": rows, "unavailable": unavailable, "n_images": m.get("n_images"),
                      "split": ds.get("split"), "dataset": _dataset_label(m)[1], "hash": ds.get("hash"),
                      "caption_transform": ds.get("caption_transform"),
                      "generation": m.get("generation") or {}, "created": m.get("created"),
                      "command": m.get("command"), "versions": m.get("versions") or {}, "prompt": m.get("prompt")}
    else:
        not_measured.append("captioning metrics (no metrics.json: the model was not evaluated)")
    if inputs.loss:
        files[LOSS_CURVE] = loss_curve_png(inputs.loss)
    else:
        not_measured.append("training loss curve (no TensorBoard logs or trainer_state.json)")
    if not inputs.train_config:
        not_measured.append("training configuration (no train_config.yaml)")
    if not inputs.license:
        not_measured.append(f"base model licence ({inputs.license_source})")

    prompt = _prompt(inputs)
    adapter_of = inputs.base_model if inputs.is_adapter else None
    usage = {major: usage_snippet(inputs.family, major, inputs.repo_id, prompt, adapter_of=adapter_of,
                                  remote_code=inputs.remote_code)
             for major in (5, 4)}
    base_hub = looks_like_hub_id(inputs.base_model)
    card = ModelCard.from_template(
        card_data(inputs), template_path=str(path),
        repo_id=inputs.repo_id, title=inputs.repo_id.split("/")[-1], family=inputs.family,
        is_adapter=inputs.is_adapter, base_model=inputs.base_model, base_hub=base_hub,
        base_revision=inputs.base_revision, license=inputs.license, license_source=inputs.license_source,
        base_local=inputs.base_local, base_fingerprint=(inputs.base_fingerprint or "")[:12],
        badges=badges, evaluation=evaluation,
        training=_training_rows(inputs.train_config) if inputs.train_config else None,
        loss_curve=LOSS_CURVE if inputs.loss else None, loss_source=inputs.loss_source,
        loss_last={k: v[-1] for k, v in (inputs.loss or {}).items() if v},
        merge=inputs.merge_check, usage_tf5=usage[5], usage_tf4=usage[4], prompt=prompt,
        reproduce=f"python eval/run.py reproduce {inputs.repo_id}", not_measured=not_measured,
        n_params=inputs.n_params, dtype=inputs.dtype,
        lineage=inputs.lineage, factory_base=bool(inputs.lineage) and inputs.lineage[-1] == FACTORY)
    # the template keeps its block tags on their own lines for readability; drop the blank runs they leave
    text = re.sub(r"\n{3,}", "\n\n", card.content).rstrip() + "\n"
    return text, files


def write_card(inputs: CardInputs, out: str | Path, template: str = DEFAULT_TEMPLATE) -> Path:
    """Render and write README (``out``) plus its badges and loss curve beside it."""
    from captioning.records import write_atomic

    out = Path(out)
    text, files = render_card(inputs, template)
    for rel, data in files.items():
        write_atomic(out.parent / rel, data)
    write_atomic(out, text)
    return out
