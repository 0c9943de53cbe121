"""Re-run the eval a released model records and compare: the core of ``eval/run.py reproduce``.

    python eval/run.py reproduce org/model            # the metrics.json of a Hub repo
    python eval/run.py reproduce path/to/release      # or of a local release folder

The model that runs is the release itself (ID_OR_DIR); the dataset, split, image selection,
prompt, decoding settings, batch size and scoring settings come from its metrics.json. The
dataset must hold exactly the recorded references (same content hash).

Tolerance: absolute, per metric, on the 0-1 scale (default :data:`DEFAULT_TOLERANCE` =
0.005, i.e. 0.5 points on the x100 scale papers print). The same software on the same kind
of hardware reproduces the numbers exactly; another GPU, CPU or library version can flip a
few greedy tokens and move a metric slightly. ``--tolerance 0`` demands equality.
Exit codes: 0 all recorded metrics agree, 1 some do not, 2 the eval could not be run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.generation import GenerationSettings
from captioning.records import METRICS, EvalRecord, record_precision
from captioning.vocabulary import BLEU_NAMES

DEFAULT_TOLERANCE = 0.005


class CannotReproduce(UserError):
    """The recorded eval cannot be re-run here (exit code 2); the message says why."""


@dataclass
class Recorded:
    """The recorded side: metrics.json (+ predictions.json when the release has one)."""

    source: str
    local_dir: Path | None
    record: dict
    predictions: list | None


@dataclass
class Comparison:
    """Recorded vs reproduced, metric by metric."""

    rows: list[dict] = field(default_factory=list)  # metric, recorded, reproduced, diff, ok
    n_recorded: int | None = None
    n_reproduced: int | None = None
    same_captions: tuple[int, int] | None = None  # (identical, compared)
    tolerance: float = DEFAULT_TOLERANCE
    unverifiable: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.unverifiable:
            return 2
        return 0 if all(r["ok"] for r in self.rows) else 1


def fetch_recorded(source: str, *, revision: str | None = None) -> Recorded:
    """Read metrics.json (and predictions.json if present) from a local folder or a hub repo."""
    from captioning.loading import looks_local
    from eval.scoring import load_json

    path = Path(source).expanduser()
    if path.is_file() and path.name == METRICS:
        path = path.parent
    if path.is_dir():
        metrics_file = path / METRICS
        if not (metrics_file.exists() or metrics_file.is_symlink()):  # a FIFO or link loop: the read names it
            raise CannotReproduce(f"{path}: no metrics.json in this folder; pass a release folder (what "
                                  "`release push --to-dir` writes) or a hub id")
        record = EvalRecord.read(metrics_file)
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            m = record.model
            model = m.get("adapter") or m.get("id")
            flag = "--adapter" if m.get("adapter") else "--model"
            raise CannotReproduce(f"{path} holds an eval record but no model: reproduce re-runs the model that sits "
                                  "beside metrics.json (a release folder, or a hub id)"
                                  + (f"; bundle this eval with the model it records (`release push --repo-id NS/NAME "
                                     f"{flag} {model} --eval {path} --to-dir DIR`) and pass DIR" if model else ""))
        preds_file = path / "predictions.json"
        return Recorded(str(path), path, record.doc,
                        load_json(preds_file, "predictions") if preds_file.is_file() else None)
    if looks_local(source):
        raise CannotReproduce(f"{source}: no such folder (pass a release folder or a hub id like org/name)")
    return _fetch_hub(source, revision)


def _fetch_hub(repo_id: str, revision: str | None) -> Recorded:
    """metrics.json from a Hub model repo through huggingface_hub (HF_ENDPOINT honoured)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    from eval.scoring import load_json

    try:
        metrics_file = hf_hub_download(repo_id, METRICS, revision=revision)
    except LocalEntryNotFoundError:  # first: it subclasses EntryNotFoundError (offline, not cached)
        raise CannotReproduce(f"cannot fetch {repo_id}/metrics.json: the Hub is unreachable or HF_HUB_OFFLINE is "
                              "set and it is not cached; download the repo (`hf download "
                              f"{repo_id} --local-dir DIR`) and pass DIR") from None
    except EntryNotFoundError:
        raise CannotReproduce(f"{repo_id} has no metrics.json: this repo records no eval to reproduce") from None
    except RepositoryNotFoundError:
        raise CannotReproduce(f"{repo_id}: no such model repo on the Hub (or it is private: log in with "
                              "`hf auth login`)") from None
    except Exception as e:
        raise CannotReproduce(f"cannot fetch {repo_id}/metrics.json: {type(e).__name__}: {e}") from None
    try:
        preds_file = hf_hub_download(repo_id, "predictions.json", revision=revision)
        predictions = load_json(preds_file, "predictions")
    except Exception:
        predictions = None
    return Recorded(repo_id, None, EvalRecord.read(metrics_file).doc, predictions)


def _need(record: dict, *keys: str) -> Any:
    cur: Any = record
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise CannotReproduce(f"metrics.json lacks {'.'.join(keys)}: it was not written by "
                                  "`eval/run.py generate`, so there is no recorded eval to re-run")
        cur = cur[k]
    return cur


def load_recorded_dataset(record: dict, *, dataset: str | None = None, images_dir: str | None = None,
                          max_images: int | None = None):
    """The recorded image selection (or its first ``max_images``), checked against the recorded
    hash. Tries ``dataset`` if given, else the recorded source, then the recorded absolute path."""
    from captioning.data import load_captions

    ds_rec = _need(record, "dataset")
    split, want_hash = _need(record, "dataset", "split"), _need(record, "dataset", "hash")
    candidates = [dataset] if dataset else [c for c in (ds_rec.get("source"), ds_rec.get("path")) if c]
    if not candidates:
        raise CannotReproduce("metrics.json names no dataset; pass --dataset")
    rec_images_dir = ds_rec.get("images_dir")
    if images_dir is None and rec_images_dir and Path(rec_images_dir).is_dir():
        images_dir = rec_images_dir
    kw = dict(shuffle=bool(ds_rec.get("shuffle")), seed=int(ds_rec.get("seed") or 0), images_dir=images_dir)
    errors = []
    for cand in dict.fromkeys(candidates):
        try:
            full = load_captions(cand, split, max_samples=ds_rec.get("max_images"), **kw).with_caption_transform(
                ds_rec.get("caption_transform") or "none")
        except UserError as e:
            errors.append(str(e))
            continue
        if full.content_hash() != want_hash:
            raise CannotReproduce(f"dataset {cand} [{split}] holds other references than the recorded eval "
                                  f"(hash {full.content_hash()[:12]} vs recorded {want_hash[:12]}); pass --dataset "
                                  "with the recorded data")
        if len(full) != record.get("n_images"):
            raise CannotReproduce(f"dataset {cand} [{split}] gives {len(full)} images, the record "
                                  f"{record.get('n_images')}")
        return cand, kw, full
    raise CannotReproduce(f"the recorded dataset is not available here: {errors[0]}"
                          + ("" if dataset else "; pass --dataset (and --images-dir) to point at a copy"))


def reproduce(source: str, *, tolerance: float = DEFAULT_TOLERANCE, max_images: int | None = None,
              revision: str | None = None, out: str | Path | None = None, dataset: str | None = None,
              images_dir: str | None = None, metrics: Sequence[str] | None = None, device: str = "auto",
              dtype: str | None = None, batch_size: int | None = None, trust_remote_code: bool = False,
              progress: bool = True, scorer: Any = None, command: str | None = None) -> tuple[Recorded, dict,
                                                                                              Comparison]:
    """Re-run the recorded eval of ``source`` (hub id or release folder) and compare.

    Returns (recorded, reproduced metrics.json record, comparison). Raises
    :class:`CannotReproduce` (or another UserError) when it cannot run.
    """
    from captioning.loading import pick_device
    from eval import scoring
    from eval.generate import GenerateConfig, run_generate

    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"--tolerance must be a number >= 0 (got {tolerance})")
    recorded = fetch_recorded(source, revision=revision)
    rec = recorded.record
    rec_metrics = _need(rec, "metrics")
    n_recorded = _need(rec, "n_images")
    if max_images is not None and max_images < 1:
        raise UserError("--max-images must be at least 1")
    subset = max_images is not None and max_images < n_recorded
    if subset and recorded.predictions is None:
        raise CannotReproduce(f"--max-images {max_images} checks a subset, which needs the recorded predictions.json "
                              "to score the same images; this release has none: drop --max-images to re-run all "
                              f"{n_recorded} images")
    gen_rec = dict(_need(rec, "generation"))  # a `score` record has none: nothing to re-run
    ds_source, ds_kw, full = load_recorded_dataset(rec, dataset=dataset, images_dir=images_dir)

    wanted = _wanted_metrics(rec_metrics, metrics)
    scoring_rec = rec.get("scoring") or {}
    tokenize = bool(scoring_rec.get("tokenize", True))

    settings = _recorded_settings(gen_rec)
    model_rec = rec.get("model") or {}
    dev = pick_device(device)
    if dtype is None:
        dtype = _recorded_dtype(rec, dev.type)
    hub_revision = revision
    if hub_revision is None and recorded.local_dir is None and model_rec.get("id") == source:
        hub_revision = model_rec.get("resolved_revision") or model_rec.get("revision")
    prompt = rec.get("prompt")
    cfg_kw = dict(
        model=str(recorded.local_dir) if recorded.local_dir else source, revision=hub_revision,
        dataset=ds_source, split=rec["dataset"]["split"],
        max_images=max_images if subset else rec["dataset"].get("max_images"), images_dir=ds_kw["images_dir"],
        shuffle=ds_kw["shuffle"], seed=ds_kw["seed"], dtype=dtype, device=device,
        caption_transform=rec["dataset"].get("caption_transform") or "none",
        trust_remote_code=trust_remote_code, family=model_rec.get("family"),
        # "" = no prompt (unconditional BLIP); None would fall back to the family default
        prompt="" if prompt is None else prompt,
        image_longest_edge=gen_rec.get("image_longest_edge"), image_splitting=gen_rec.get("image_splitting"),
        quantize=rec.get("quantize") or "none",  # an int8 number is reproduced at int8,
        int8_batches=rec.get("quantize") == "int8" and int(rec.get("images_per_forward") or 1) > 1,  # as batched
        batch_size=batch_size or int(rec.get("batch_size") or 8), generation=settings,
        metrics=wanted, tokenize=tokenize, progress=progress, overwrite=False,
    )
    # one Scorer for both scorings of a subset check (METEOR's JVM starts once)
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp, \
            (nullcontext(scorer) if scorer is not None else scoring.Scorer()) as scorer:
        cfg = GenerateConfig(out=Path(out) if out else Path(tmp) / "run", **cfg_kw)
        result = run_generate(cfg, scorer=scorer, command=command)
        assert result is not None  # reproduce runs as one process
        new = result.record
        recorded_values = {m: rec_metrics[m] for m in wanted}
        if subset:
            # the recorded side of a subset check: the recorded captions of those images, scored
            # the same way (CIDEr-D's idf depends on the set, so full-set numbers cannot be used)
            keep = {json.dumps(p["image_id"]) for p in result.predictions}
            sub_preds = [p for p in recorded.predictions if json.dumps(p.get("image_id")) in keep]
            recorded_values = scoring.score(full[:max_images].references_coco(), sub_preds, tokenize=tokenize,
                                            metrics=wanted, scorer=scorer)["metrics"]

    comparison = _compare(recorded, result, recorded_values, wanted, tolerance=tolerance,
                          n_recorded=len(sub_preds) if subset else n_recorded)
    return recorded, new, comparison


def _wanted_metrics(rec_metrics: dict, metrics: Sequence[str] | None) -> list[str]:
    """The metrics to compare: ``metrics`` ("Bleu" or "BLEU" = Bleu_1..4), else every one the
    record holds a value for; each must have a recorded value."""
    if metrics:
        wanted = [x for m in metrics for x in (list(BLEU_NAMES) if m in ("Bleu", "BLEU") else [m])]
    else:
        wanted = [m for m, v in rec_metrics.items() if v is not None]
    unknown = [m for m in wanted if m not in rec_metrics or rec_metrics[m] is None]
    if unknown:
        raise CannotReproduce(f"metrics.json records no value for {', '.join(unknown)}")
    if not wanted:
        raise CannotReproduce("metrics.json records no metric values")
    return wanted


def _recorded_settings(gen_rec: dict) -> GenerationSettings:
    """The recorded decoding settings (keys GenerationSettings does not know are ignored)."""
    names = {f.name for f in dataclasses.fields(GenerationSettings)}
    try:
        return GenerationSettings(**{k: v for k, v in gen_rec.items() if k in names})
    except TypeError as e:  # a value of the wrong type (a number written as text): the record is damaged
        raise CannotReproduce(f"metrics.json: its generation settings are not usable ({e}); regenerate it with "
                              "eval/run.py generate") from None


def _recorded_dtype(rec: dict, device_type: str) -> str:
    """The recorded dtype on the same kind of device (``device_type``: "cpu", "cuda", ...);
    elsewhere the device's own default (bf16 recorded on a GPU would crawl on a CPU)."""
    rec_device = str(rec.get("device") or "")
    return rec.get("dtype") if rec_device.split(":")[0] == device_type and rec.get("dtype") else "auto"


def _compare(recorded: Recorded, result: Any, recorded_values: dict, wanted: Sequence[str], *,
             tolerance: float, n_recorded: int) -> Comparison:
    """Recorded vs reproduced values (and captions, when the release has predictions.json)."""
    new = result.record
    comparison = Comparison(tolerance=tolerance, n_recorded=n_recorded, n_reproduced=new["n_images"])
    if recorded.predictions is not None:
        old = {json.dumps(p.get("image_id")): p.get("caption") for p in recorded.predictions
               if isinstance(p, dict)}
        same = sum(1 for p in result.predictions if old.get(json.dumps(p["image_id"])) == p["caption"])
        comparison.same_captions = (same, len(result.predictions))
    for m in wanted:
        a, b = recorded_values.get(m), new["metrics"].get(m)
        if b is None:
            comparison.unverifiable.append(f"{m}: {new.get('unavailable', {}).get(m, 'not computed here')}")
            comparison.rows.append({"metric": m, "recorded": a, "reproduced": None, "diff": None, "ok": False})
            continue
        diff = b - a
        comparison.rows.append({"metric": m, "recorded": a, "reproduced": b, "diff": diff,
                                "ok": abs(diff) <= tolerance})
    if comparison.n_reproduced != comparison.n_recorded:
        comparison.unverifiable.append(f"n_images {comparison.n_reproduced} vs recorded {comparison.n_recorded}")
    return comparison


def format_comparison(recorded: Recorded, new: dict, comparison: Comparison) -> str:
    """Recorded vs reproduced, side by side, with the verdict on the last line."""
    rec = recorded.record
    ds = rec.get("dataset") or {}
    was, now = record_precision(rec) or "?", record_precision(new)
    lines = [f"model:   {recorded.source}",
             f"dataset: {ds.get('source')} [{ds.get('split')}], {comparison.n_reproduced} images "
             f"(refs hash {str(ds.get('hash'))[:12]})",
             f"recorded {rec.get('created', '?')} with {rec.get('versions', {}).get('transformers', '?')} "
             f"transformers / {rec.get('device', '?')} {was}; reproduced with "
             f"{new.get('versions', {}).get('transformers', '?')} / {new.get('device')} {now}",
             "",
             f"{'metric':<10}  {'recorded':>10}  {'reproduced':>10}  {'diff':>10}  ok"]
    for r in comparison.rows:
        f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        d = "n/a" if r["diff"] is None else f"{r['diff']:+.4f}"
        lines.append(f"{r['metric']:<10}  {f(r['recorded']):>10}  {f(r['reproduced']):>10}  {d:>10}  "
                     f"{'yes' if r['ok'] else 'NO'}")
    if comparison.same_captions:
        same, n = comparison.same_captions
        lines.append(f"\nidentical captions: {same}/{n}")
    lines.append("")
    if comparison.unverifiable:
        lines.append("cannot verify: " + "; ".join(comparison.unverifiable)
                     + " (pass --metrics to check the others)")
    elif comparison.exit_code == 0:
        lines.append(f"reproduced: all {len(comparison.rows)} metrics agree within {comparison.tolerance:g} "
                     "(absolute, 0-1 scale)")
    else:
        bad = [r for r in comparison.rows if not r["ok"]]
        lines.append("NOT reproduced: " + ", ".join(f"{r['metric']} differs by {r['diff']:+.4f}" for r in bad)
                     + f" (tolerance {comparison.tolerance:g})")
    return "\n".join(lines)
