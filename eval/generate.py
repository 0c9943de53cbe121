"""Caption a dataset split, then score it: the core of ``eval/run.py generate``.

    python eval/run.py generate --model DIR --dataset data/shapes --split test --out runs/x
    accelerate launch --num_processes 2 eval/run.py generate ...   # one shard per process

:func:`run_generate` writes ``OUT/predictions.json``, ``OUT/metrics.json`` and
``OUT/report.html``. Each finished batch is appended (and fsynced) to a journal,
``OUT/predictions.partial.jsonl``; a run that is killed and started again with the same
settings and ``--out`` captions only the batches that are missing. The journal's first line
holds a fingerprint of every setting that decides the captions, so a restart with other
settings is refused instead of mixing predictions.

Batches are fixed slices of the split (batch ``i`` is images ``i*B .. i*B+B-1``). Resuming and
sharding hand out whole batches, so every image is captioned in exactly the batch it would
have had in one uninterrupted single-process run: padding, and therefore every caption, is
the same, and predictions.json is byte-identical.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.generation import GenerationSettings, check_parallel_batches
from captioning.images import MAX_PIXELS
from captioning.records import KIND_EVAL, METRICS, EvalRecord, check_writable, write_json, write_record

JOURNAL = "predictions.partial.jsonl"
JOURNAL_VERSION = 1
PREDICTIONS = "predictions.json"
REPORT = "report.html"


@dataclass
class GenerateConfig:
    """Everything ``generate`` needs; the CLI fills it from flags, reproduce from metrics.json."""

    model: str
    dataset: str
    split: str
    out: Path
    adapter: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    family: str | None = None
    #: None: the prompt of train_config.yaml beside the model, else the family's default
    prompt: str | None = None
    image_longest_edge: int | None = None
    #: None keeps the processor's setting; False turns SmolVLM's image splitting off
    image_splitting: bool | None = None
    max_images: int | None = None
    images_dir: str | None = None
    #: score against references rewritten by this captioning.data transform (a style fine-tune
    #: against references in its style); recorded in metrics.json's dataset block
    caption_transform: str = "none"
    shuffle: bool = False
    seed: int = 0
    #: caption around images that cannot be read (recorded with the reason, not scored);
    #: off: the first one stops the run, naming the file (the journal keeps what was done)
    skip_bad_images: bool = False
    #: refuse images larger than this many pixels (a decompression-bomb guard; None: Pillow's own)
    max_pixels: int | None = MAX_PIXELS
    batch_size: int = 8
    #: batches captioned at once ("auto": two on a CPU, one on a GPU); speed only, never captions
    parallel_batches: int | str = "auto"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    #: metric names passed to eval.scoring.score (None: all)
    metrics: list[str] | None = None
    tokenize: bool = True
    report: bool = True
    #: report.html shows this many worst and best images (all when the split is small)
    report_rows: int = 100
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        check_parallel_batches(self.parallel_batches)
        if self.max_images is not None and self.max_images < 1:
            raise UserError("--max-images must be at least 1")
        if self.generation.num_captions != 1:
            raise UserError("generate writes one caption per image: --num-captions must be 1")
        if self.image_longest_edge is not None and self.image_longest_edge < 1:
            raise UserError("--image-longest-edge must be a positive number of pixels")
        if self.report_rows < 1:
            raise UserError("--report-rows must be at least 1")


# --------------------------------------------------------------------------- processes


class Processes:
    """This process's place among ``accelerate launch`` / ``torchrun`` processes.

    accelerate's PartialState is used only when a launcher started several processes, so a
    plain run never initialises torch.distributed (and never imports accelerate).
    """

    def __init__(self):
        self.state = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            # Without a GPU, accelerate only initialises gloo when told to run on CPU.
            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str | None:
        """The device accelerate assigned to this process (None when not distributed)."""
        return str(self.state.device) if self.state is not None and self.world > 1 else None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def share(self, items: list) -> list:
        """This process's contiguous part of ``items`` (accelerate's split_between_processes)."""
        if self.state is None or self.world == 1:
            return list(items)
        with self.state.split_between_processes(list(items)) as part:
            return list(part)


# --------------------------------------------------------------------------- journal


def journal_path(out: Path, rank: int) -> Path:
    """Each process appends to its own journal; the main process's is the plain name."""
    return out / (JOURNAL if rank == 0 else f"predictions.partial.rank{rank}.jsonl")


def journal_files(out: Path) -> list[Path]:
    return sorted(out.glob("predictions.partial*.jsonl"))


@dataclass
class Journal:
    """A parsed journal: its header, finished batches and the length of its intact prefix."""

    path: Path
    header: dict | None
    batches: dict[int, dict]
    intact_bytes: int


def read_journal(path: Path) -> Journal:
    """Parse a journal. A torn last line (the process was killed mid-write) is ignored and
    later cut off; damage anywhere else is an error, because lines are only ever appended."""
    data = path.read_bytes()
    header, batches, pos = None, {}, 0
    lines = data.split(b"\n")
    for k, raw in enumerate(lines):
        last = k == len(lines) - 1
        if last:  # no newline after it: empty, or torn by a kill
            break
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if k == len(lines) - 2 and not lines[-1]:
                # a complete-looking but unparsable last line: a torn write that got its newline
                break
            raise UserError(f"{path}: line {k + 1} is damaged; delete the file (its images are captioned "
                            "again) or pass --overwrite") from None
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


def _refuse_other_settings(where: str, old: dict | None, new: dict) -> UserError:
    changes = _diff(old or {}, new)
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    return UserError(f"{where} was made with other settings ({shown or 'unknown settings'}): re-run with the "
                     "same settings to resume, or pass --overwrite or another --out")


# --------------------------------------------------------------------------- the run


@dataclass
class GenerateResult:
    """What a finished generate run produced (on the main process)."""

    record: dict
    predictions: list[dict]
    score: dict
    out: Path


def _settings(cfg: GenerateConfig, captioner, dataset, model_block: dict) -> dict:
    """The settings that decide the captions (the journal fingerprint covers exactly these).

    Local folders enter by content hash, not path, so a moved folder still resumes; the
    device enters by type only, so shards on cuda:0 and cuda:1 agree.
    """
    return {
        "model": {k: model_block[k] for k in ("content_hash", "adapter_hash", "family")}
        | {"id": None if model_block["content_hash"] else model_block["id"],
           "revision": model_block["resolved_revision"] or model_block["revision"]},
        "dataset": {"split": dataset.split, "hash": dataset.content_hash(), "n_images": len(dataset),
                    "max_images": cfg.max_images, "shuffle": cfg.shuffle,
                    "seed": cfg.seed if cfg.shuffle else None},
        "prompt": captioner.prompt,
        "generation": cfg.generation.to_dict(),
        "image_longest_edge": cfg.image_longest_edge,
        "image_splitting": cfg.image_splitting,
        "batch_size": cfg.batch_size,
        "dtype": str(captioner.dtype).replace("torch.", ""),
        "load_in_4bit": cfg.load_in_4bit,
        "device": captioner.device.type,
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_batch(rec: dict, ids: list, path: Path) -> list[str]:
    captions = rec.get("captions")
    if rec.get("image_ids") != ids or not isinstance(captions, list) or len(captions) != len(ids):
        raise UserError(f"{path}: batch {rec.get('batch')} holds other images than this split's batch; the "
                        "dataset changed since: pass --overwrite or another --out")
    return captions


def _load_done(out: Path, fp: str, settings: dict, batches: list[list]) -> tuple[dict[int, list[str]], list[Journal]]:
    journals = [read_journal(p) for p in journal_files(out)]
    done: dict[int, list[str]] = {}
    for j in journals:
        if j.header is None:
            continue
        if j.header["fingerprint"] != fp:
            raise _refuse_other_settings(f"the unfinished run in {j.path}", j.header.get("settings"), settings)
        for b, rec in j.batches.items():
            if not 0 <= b < len(batches):
                raise UserError(f"{j.path}: batch {b} is outside this split; pass --overwrite or another --out")
            done.setdefault(b, _check_batch(rec, batches[b], j.path))
    return done, journals


def _json_ids(ids: list) -> list:
    # journal lines round-trip through JSON: compare ids in their JSON form
    return json.loads(json.dumps(ids))


def run_generate(cfg: GenerateConfig, *, scorer: Any = None, command: str | None = None,
                 log: Callable[[str], None] = _log) -> GenerateResult | None:
    """Caption ``cfg.split`` of ``cfg.dataset`` with ``cfg.model`` and score it into ``cfg.out``.

    Returns the result on the main process and None on the other processes of a sharded
    run. ``scorer``: a warm :class:`eval.scoring.Scorer` to reuse (tests, repeated evals).
    """
    from captioning.data import load_captions
    from captioning.generation import caption_images, parallel_batches_for, plan_batches, run_parallel
    from captioning.loading import load_captioner
    from eval import scoring
    from eval.provenance import describe_model, library_versions, utc_now

    t_start = time.perf_counter()
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also transformers' "Loading weights" bars
    procs = Processes()
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    if procs.main:
        check_writable(out, "--out")  # before the model loads and hours of captioning start

    dataset = load_captions(cfg.dataset, cfg.split, max_samples=cfg.max_images, shuffle=cfg.shuffle,
                            seed=cfg.seed, images_dir=cfg.images_dir).with_caption_transform(
        cfg.caption_transform).with_max_pixels(cfg.max_pixels)
    ids = [ex.image_id for ex in dataset]
    if cfg.max_images is not None and len(ids) < cfg.max_images and procs.main:
        log(f"note: --max-images {cfg.max_images}, but split {cfg.split!r} of {cfg.dataset} holds {len(ids)} "
            f"images: captioning all {len(ids)} (metrics.json records n_images {len(ids)})")
    if len(set(map(repr, ids))) != len(ids):
        raise UserError(f"{cfg.dataset}: split {cfg.split!r} lists an image id twice; fix the annotations")
    device = cfg.device
    if procs.device is not None and device == "auto":
        device = procs.device  # one GPU per process under accelerate launch
    captioner = load_captioner(cfg.model, revision=cfg.revision, adapter=cfg.adapter, dtype=cfg.dtype,
                               device=device, load_in_4bit=cfg.load_in_4bit,
                               trust_remote_code=cfg.trust_remote_code, family=cfg.family,
                               prompt=cfg.prompt, image_longest_edge=cfg.image_longest_edge,
                               image_splitting=cfg.image_splitting)
    model_block = describe_model(captioner)
    settings = _settings(cfg, captioner, dataset, model_block)
    fp = fingerprint(settings)
    B = cfg.batch_size
    lanes = parallel_batches_for(captioner, cfg.generation, cfg.parallel_batches)
    batches = [_json_ids(ids[i:i + B]) for i in range(0, len(ids), B)]

    if procs.main:
        if cfg.overwrite:
            for p in journal_files(out) + [out / PREDICTIONS, out / METRICS, out / REPORT]:
                p.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        config_echo = {"model": model_block["id"], "adapter": model_block["adapter"],
                       "family": model_block["family"], "dataset": f"{dataset.source} [{dataset.split}]",
                       "images": len(dataset), "prompt": captioner.prompt, "batch_size": B,
                       "parallel_batches": lanes,
                       "dtype": settings["dtype"], "device": str(captioner.device),
                       "generation": cfg.generation.to_dict(), "processes": procs.world, "out": str(out)}
        log("generate: " + json.dumps(config_echo, ensure_ascii=False))
    procs.barrier()

    # Every process reads every journal before any process writes, so all plan alike.
    done, journals = _load_done(out, fp, settings, batches)
    finished = _finished_run(out, fp, settings, ids) if not journals else None
    procs.barrier()

    n_resumed = sum(len(batches[b]) for b in done)
    todo = [b for b in range(len(batches)) if b not in done] if finished is None else []
    mine = procs.share(todo)
    t_gen = time.perf_counter()
    if mine:
        own = journal_path(out, procs.rank)
        old = next((j for j in journals if j.path == own), None)
        with open(own, "ab") as f:
            if old is not None and old.intact_bytes < own.stat().st_size:
                f.truncate(old.intact_bytes)  # drop a line torn by a kill
            if old is None or old.header is None:
                f.truncate(0)
                _append(f, {"journal": JOURNAL_VERSION, "fingerprint": fp, "settings": settings})
            if procs.main and n_resumed:
                log(f"generate: resuming, {n_resumed}/{len(ids)} images already captioned in {out}")
            bar = _progress(cfg, procs, sum(len(batches[b]) for b in mine))

            # journal batch b is images b*B ..; the last ones may run as smaller pieces (plan_batches)
            pieces = plan_batches([[(b, i) for i in range(b * B, min((b + 1) * B, len(ids)))] for b in mine], lanes)

            def caption_piece(piece: list[tuple[int, int]]) -> tuple[int, list[str | dict]]:
                # a journal entry is the caption, or {"skipped": reason} for an unreadable image
                images, slots = [], []
                for _, i in piece:
                    try:
                        images.append(dataset[i].load_image())
                        slots.append(None)
                    except UserError as e:
                        if not cfg.skip_bad_images:
                            raise UserError(f"{e} (pass --skip-bad-images to caption around it; this run resumes "
                                            "where it stopped once the file is fixed)") from None
                        slots.append({"skipped": " ".join(str(e).split())})
                caps = iter([c[0] for c in caption_images(captioner, images, None, cfg.generation,
                                                          batch_size=len(images), parallel_batches=1)]
                            if images else [])
                return piece[0][0], [next(caps) if s is None else s for s in slots]

            got: list[str] = []
            try:
                # pieces finish in order, so a kill loses only the batches still in flight
                for b, captions in run_parallel([functools.partial(caption_piece, p) for p in pieces], lanes):
                    got += captions
                    if len(got) == len(batches[b]):
                        _append(f, {"batch": b, "image_ids": batches[b], "captions": got})
                        got = []
                    if bar is not None:
                        bar.update(len(captions))
            finally:
                if bar is not None:
                    bar.close()
    procs.barrier()
    generation_s = time.perf_counter() - t_gen  # after the barrier: the slowest shard counts
    if not procs.main:
        return None
    n_new = 0 if finished is not None else len(ids) - n_resumed  # all shards together

    if finished is not None:
        predictions, skipped = finished
        log(f"generate: {out / PREDICTIONS} already holds this run's predictions; scoring them again")
    else:
        done, _ = _load_done(out, fp, settings, batches)
        missing = [b for b in range(len(batches)) if b not in done]
        if missing:  # a process died without raising; never write a partial predictions.json
            raise RuntimeError(f"batches {missing[:5]} were not captioned; run the same command again to finish")
        entries = list(zip(dataset, (c for b in range(len(batches)) for c in done[b])))
        predictions = [{"image_id": ex.image_id, "caption": cap} for ex, cap in entries if isinstance(cap, str)]
        skipped = [{"image_id": ex.image_id, "file": ex.file_name, "reason": cap["skipped"]}
                   for ex, cap in entries if isinstance(cap, dict)]
        write_json(out / PREDICTIONS, predictions)
    if skipped:
        log(f"note: --skip-bad-images: {len(skipped)} of {len(ids)} images could not be read and were not scored "
            f"(listed under skipped_images in metrics.json), first: {skipped[0]['file']}: {skipped[0]['reason']}")

    t_score = time.perf_counter()
    # an empty caption is what the model said (it stopped at once): scored as matching nothing
    # and listed, never an abort of a long run
    result = scoring.score(dataset.references_coco(), predictions, tokenize=cfg.tokenize, metrics=cfg.metrics,
                           allow_empty=True, allow_missing=bool(skipped), scorer=scorer)
    if result["empty_captions"]:
        log(f"note: {len(result['empty_captions'])} of {len(predictions)} captions are empty (the model stopped at "
            "once); each scores 0 and is listed under empty_captions in metrics.json")
    scoring_s = time.perf_counter() - t_score
    record = {
        "metrics": result["metrics"],
        "unavailable": result.get("unavailable", {}),
        "extras": result.get("extras", {}),
        "n_images": result.get("n_images", len(predictions)),
        "empty_captions": result["empty_captions"],
        "skipped_images": skipped,
        "dataset": _dataset_block(cfg, dataset),
        "model": model_block,
        "generation": cfg.generation.to_dict() | {"image_longest_edge": cfg.image_longest_edge,
                                                  "image_splitting": cfg.image_splitting},
        "prompt": captioner.prompt,
        "batch_size": B,
        "dtype": settings["dtype"],
        "dtype_requested": cfg.dtype,
        "load_in_4bit": cfg.load_in_4bit,
        "device": str(captioner.device),
        "device_requested": cfg.device,
        "scoring": {"tokenize": cfg.tokenize, "metrics": cfg.metrics},
        "versions": library_versions(),
        "command": command,
        "created": utc_now(),
        "seconds": None,
        "timing": {"generation_s": round(generation_s, 3), "scoring_s": round(scoring_s, 3),
                   "images_captioned": n_new, "images_resumed": n_resumed, "processes": procs.world,
                   "parallel_batches": lanes,
                   "images_per_s": round(n_new / generation_s, 4) if n_new and generation_s > 0 else None},
        # the settings that decide the captions, and their hash: a later run into the same
        # --out compares against them, and so can anyone comparing two metrics.json files
        "fingerprint": {"sha256": fp, "settings": settings},
    }
    if cfg.report:
        from eval.report import write_report

        write_report(out / REPORT, record, dataset, predictions, result, rows=cfg.report_rows)
    record["seconds"] = round(time.perf_counter() - t_start, 3)
    write_record(out / METRICS, KIND_EVAL, record)
    for p in journal_files(out):  # the run is complete: its journal has served its purpose
        p.unlink(missing_ok=True)
    return GenerateResult(record=record, predictions=predictions, score=result, out=out)


def _append(f, rec: dict) -> None:
    """Append one JSON line and make it durable before the next batch starts."""
    f.write((json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


def _progress(cfg: GenerateConfig, procs: Processes, total: int):
    """A tqdm bar in images and images/s on the main process (others stay quiet)."""
    if not cfg.progress or not procs.main or total == 0:
        return None
    from tqdm.auto import tqdm

    desc = "captioning" if procs.world == 1 else f"captioning (shard 1/{procs.world})"
    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, mininterval=1.0, smoothing=0.1)


def _dataset_block(cfg: GenerateConfig, dataset) -> dict:
    """The ``dataset`` block of metrics.json: what to load again and the hash to check."""
    from captioning.loading import looks_local

    block = dataset.describe()
    local = looks_local(cfg.dataset) or Path(cfg.dataset).exists()
    block.update({
        "path": str(Path(cfg.dataset).resolve()) if local else None,
        "images_dir": str(Path(cfg.images_dir).resolve()) if cfg.images_dir else None,
        "max_images": cfg.max_images, "shuffle": cfg.shuffle, "seed": cfg.seed,
    })
    return block


def _finished_run(out: Path, fp: str, settings: dict, ids: Sequence) -> tuple[list[dict], list[dict]] | None:
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
            raise _refuse_other_settings(what, old_settings, settings)
        raise UserError(f"{what} (predictions.json / metrics.json) that this command did not make: "
                        "pass --overwrite or another --out")
    try:
        predictions = json.loads(preds_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{preds_path}: unreadable ({e.__class__.__name__}); pass --overwrite") from None
    skipped = (old.get("skipped_images") or []) if isinstance(old, dict) else []
    not_scored = {json.dumps(s.get("image_id")) for s in skipped}
    got = [p.get("image_id") for p in predictions] if isinstance(predictions, list) else None
    if got != [i for i in _json_ids(list(ids)) if json.dumps(i) not in not_scored]:
        raise UserError(f"{preds_path} does not match this split's images: pass --overwrite or another --out")
    return predictions, skipped


def _recorded_fingerprint(record: Any) -> tuple[str | None, dict | None]:
    """(sha256, settings) a finished run recorded in its metrics.json."""
    block = record.get("fingerprint") if isinstance(record, dict) else None
    if isinstance(block, dict) and isinstance(block.get("sha256"), str):
        return block["sha256"], block.get("settings") if isinstance(block.get("settings"), dict) else None
    return None, None
