"""Model cards: a Jinja template from model_cards/ plus data, rendered offline.

    release card --model releases/style --metrics runs/eval/metrics.json --out releases/style/README.md

:func:`collect_inputs` (release/card_inputs.py) reads what a card is made of;
:func:`render_card` is pure: inputs in, README text and the files it links (metric
badges as SVG and the loss curve as PNG, drawn by release/card_images.py) out;
:func:`write_card` writes them. Front matter (license, base_model, datasets,
pipeline_tag, library_name, tags, model-index) goes through huggingface_hub's
ModelCardData, and the badges, the metrics table and model-index are all printed from
the same rounded numbers. What is missing is shown as "not measured", never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.lora_targets import coverage_text
from captioning.options import option
from captioning.records import record_precision
from captioning.vocabulary import DEFAULT_MAX_NEW_TOKENS, style_of

# the card's inputs and images live beside this module; their names stay importable from here
from release.card_images import DIGITS, LOSS_CURVE, fmt, loss_curve_png, make_badges, metric_items
from release.card_inputs import FACTORY, CardInputs, collect_inputs, looks_like_hub_id

__all__ = ["DEFAULT_TEMPLATE", "CardOptions", "TEMPLATES_DIR", "CardInputs", "card_data", "collect_inputs",
           "looks_like_hub_id",
           "render_card", "usage_snippet", "write_card"]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "model_cards"
DEFAULT_TEMPLATE = "model_card"


@dataclass
class CardOptions:
    """What ``release card`` renders; its flags are these fields (captioning.options.click_options)."""

    model_dir: Path = option(flag="--model", help="release, merged-model or training output folder")
    out: Path = option(help="README.md to write (badges and the loss curve go beside it)")
    metrics: Path | None = option(None, help="metrics.json from eval/run.py generate (default: the one in --model)")
    train_config: Path | None = option(None, help="train_config.yaml (default: the one in --model)")
    logs: Path | None = option(None, help="training output folder with logs/ for the loss curve (default: --model)")
    template: str = option(DEFAULT_TEMPLATE, help="template name in model_cards/ or a file")
    repo_id: str | None = option(None, help="repo id the card's snippets load (default: the --model folder)")
    license: str | None = option(None, help="licence id when the base model's cannot be read")


def usage_snippet(family: str | None, major: int, model_id: str, prompt: str | None, *, image: str = "photo.jpg",
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, adapter_of: str | None = None,
                  remote_code: bool = False) -> str:
    """The Python code a card shows for transformers ``major`` (4 or 5).

    The same text is what tests/test_release_compat.py runs under both majors.
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "usage")),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    from captioning.families import get_family

    kind = get_family(family).usage_template if family else "chat"
    auto = "AutoModelForImageTextToText" if major >= 5 else "AutoModelForVision2Seq"
    return env.get_template(f"{kind}.py.j2").render(
        auto_class=auto, model_id=model_id, image=image, prompt=prompt, max_new_tokens=max_new_tokens,
        adapter_of=adapter_of, major=major, remote=", trust_remote_code=True" if remote_code else "").strip() + "\n"


def _training_rows(tc: dict[str, Any], coverage: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The card's training table: every setting that shapes what the model says, read from
    train_config.yaml (the fully resolved config: a key it lacks shows as "not recorded",
    never as a default guessed here), and the LoRA ``coverage`` the training record holds."""
    def sec(name: str) -> dict:
        v = tc.get(name)
        return v if isinstance(v, dict) else {}

    def v(section: dict, key: str) -> Any:
        return section.get(key, "not recorded")

    m, lo, q, d, o, ev = sec("model"), sec("lora"), sec("quantization"), sec("data"), sec("optim"), sec("eval")
    rows: list[tuple[str, str]] = []
    if m.get("factory"):
        f = m["factory"]
        rows.append(("base model", f"random {v(f, 'size')} {v(f, 'family')} from synthetic.factory "
                                   f"(seed {v(f, 'seed')})"))
    elif m.get("name_or_path"):
        rows.append(("base model", f"`{m['name_or_path']}`" + (f" @ {m['revision']}" if m.get("revision") else "")))
    if m.get("family"):
        rows.append(("family", str(m["family"])))
    if lo.get("enabled"):
        tgt = lo.get("target_modules") or "every linear layer of the language model"
        extras = (", DoRA" if lo.get("use_dora") else "") + (", rsLoRA" if lo.get("use_rslora") else "")
        rows.append(("method", f"LoRA r={v(lo, 'r')}, alpha={v(lo, 'alpha')}, dropout={v(lo, 'dropout')}{extras}"))
        rows.append(("LoRA targets", f"`{tgt}`" if isinstance(tgt, str) else ", ".join(map(str, tgt))))
        rows.append(("LoRA coverage",
                     coverage_text(coverage, m.get("family"), code=True) if coverage else "not recorded"))
    elif lo:
        rows.append(("method", "full fine-tuning"))
    if "freeze_vision" in m:
        rows.append(("vision tower", "frozen" if m["freeze_vision"] else "trained"))
    if q.get("load_in_4bit") or q.get("load_in_8bit"):
        rows.append(("quantization", f"4-bit {v(q, 'quant_type')}" if q.get("load_in_4bit") else "8-bit"))
    if d.get("source"):
        rows.append(("training data", f"`{d['source']}` [{v(d, 'train_split')}]"
                     + (f", at most {d['max_train_samples']} images" if d.get("max_train_samples") else "")))
    if style_of(d.get("caption_transform")):
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
        # TrainingArguments' names, as training.config writes them
        steps = f"{o['max_steps']} steps" if (o.get("max_steps") or -1) > 0 else f"{v(o, 'num_train_epochs')} epochs"
        rows += [("schedule", f"{steps}, batch {v(o, 'per_device_train_batch_size')} x "
                              f"{v(o, 'gradient_accumulation_steps')} accumulation"),
                 ("optimizer", f"{v(o, 'optim')}, lr {v(o, 'learning_rate')}, {v(o, 'lr_scheduler_type')} schedule, "
                               f"weight decay {v(o, 'weight_decay')}"),
                 ("precision", str(v(o, "precision"))), ("seed", str(v(o, "seed")))]
        if o.get("label_smoothing_factor"):
            rows.append(("label smoothing", str(o["label_smoothing_factor"])))
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


def _scene_accuracy(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The card's scene accuracy table, rounded like every metric; None when the evaluated
    dataset records no scenes. Kept out of the badges and model-index: it is no standard
    captioning metric and means something only on the synthetic shapes set."""
    scene = metrics.get("scene_accuracy")
    if not isinstance(scene, dict):
        return None
    from eval.scene import LABELS

    rows = []
    for key, name in LABELS.items():
        value = scene.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"name": name, "value": fmt(value)})
        elif key in scene:
            rows.append({"name": name, "value": "not measured: no caption states a relation"
                         if key == "relation" else "not measured"})
    return {"rows": rows, "n_images": scene.get("n_images")}


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
        if style_of(ds.get("caption_transform")):
            args["caption_transform"] = ds["caption_transform"]  # references rewritten in the model's style
        for name, value in metric_items(inputs.metrics):
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
        rows = [{"name": k, "value": fmt(v)} for k, v in metric_items(m)]
        unavailable = [{"name": k, "reason": str(r)} for k, r in (m.get("unavailable") or {}).items()]
        recorded = {k for k, _ in metric_items(m)}
        unavailable += [{"name": k, "reason": "not computed"} for k, v in (m.get("metrics") or {}).items()
                        if v is None and k not in recorded and k not in (m.get("unavailable") or {})]
        evaluation = {"rows": rows, "unavailable": unavailable, "n_images": m.get("n_images"),
                      "split": ds.get("split"), "dataset": _dataset_label(m)[1], "hash": ds.get("hash"),
                      "caption_transform": ds.get("caption_transform"),
                      "generation": m.get("generation") or {}, "created": m.get("created"),
                      "command": m.get("command"), "versions": m.get("versions") or {}, "prompt": m.get("prompt"),
                      "scene": _scene_accuracy(m),
                      "precision": record_precision(m)}
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
        training=_training_rows(inputs.train_config, inputs.lora_coverage) if inputs.train_config else None,
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
    """Render and write README (``out``) plus its badges and loss curve beside it, as the
    card's one writer (captioning.files.output_lock of ``out``); what a killed run left
    half-written of these files is removed first."""
    from captioning.files import output_lock, remove_partials, write_atomic

    with output_lock(out, "--out", file=True) as out:
        text, files = render_card(inputs, template)
        for rel, data in files.items():
            remove_partials(out.parent / rel)
            write_atomic(out.parent / rel, data)
        write_atomic(out, text)
    return out
