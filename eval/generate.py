"""Caption a dataset split, then score it: the core of ``eval/run.py generate``.

    python eval/run.py generate --model DIR --dataset data/shapes --split test --out runs/x
    accelerate launch --num_processes 2 eval/run.py generate ...   # one shard per process

:func:`run_generate` writes ``OUT/predictions.json``, ``OUT/metrics.json`` and
``OUT/report.html``. Each finished batch is appended to a journal (eval/journal.py); a run that
is killed and started again with the same settings and ``--out`` captions only the batches that
are missing, and a restart with other settings is refused instead of mixing predictions.

Batches are fixed slices of the split (batch ``i`` is images ``i*B .. i*B+B-1``). Resuming and
sharding hand out whole batches, so every image is captioned in exactly the batch it would
have had in one uninterrupted single-process run: padding, and therefore every caption, is
the same, and predictions.json is byte-identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.files import output_lock, write_json
from captioning.generation import GenerationSettings, images_per_forward
from captioning.images import MAX_PIXELS
from captioning.options import option, positive_int
from captioning.records import KIND_EVAL, METRICS, write_record
from captioning.vocabulary import CAPTION_TRANSFORM_NAMES, QUANTIZE_CHOICES
from eval.journal import (
    PREDICTIONS,
    append,
    fingerprint,
    finished_run,
    journal_files,
    journal_path,
    json_ids,
    load_done,
    open_journal,
)

REPORT = "report.html"

MODEL, DATA, DECODING, OUTPUT = "model", "data", "decoding", "scoring and output"  # flag groups of --help


@dataclass
class GenerateConfig:
    """Everything ``generate`` needs; eval/run.py fills it from flags (each field's help is its
    flag's), reproduce from metrics.json."""

    model: str = option(help="hub id, model folder, or training output folder", group=MODEL)
    dataset: str = option(help="COCO folder/json, image folder, or known hub dataset id", group=DATA)
    split: str = option(help="the split to caption (test, val, ...)", group=DATA)
    out: Path = option(help="output folder (resumes a killed run with the same settings)", group=OUTPUT)
    adapter: str | None = option(None, help="LoRA adapter folder written by training/train.py", group=MODEL)
    revision: str | None = option(None, help="hub revision (branch, tag or commit)", group=MODEL)
    dtype: str = option("auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, fp16", group=MODEL)
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, mps", group=MODEL)
    load_in_4bit: bool = option(False, help="4-bit NF4 weights (bitsandbytes)", group=MODEL)
    quantize: str = option("none", help="int8: int8 weights and int8 activations (scaled per call) in every "
                                        "Linear layer (CPU only; faster: BENCHMARKS.md, \"int8 serving on CPU\"); "
                                        "recorded, since it changes the numbers",
                           group=MODEL, choices=QUANTIZE_CHOICES)
    int8_batches: bool = option(False, help="with --quantize int8: --batch-size images per forward, as at full "
                                            "precision (more images/s, but a caption then depends on the images "
                                            "batched with it); recorded", group=MODEL)
    prepack: bool = option(True, help="plain fp32 Linear layers instead of ones prepacked for oneDNN (CPU; "
                                      "prepacked is faster, same captions: BENCHMARKS.md); not recorded, as it does "
                                      "not change the captions", group=MODEL)
    trust_remote_code: bool = option(False, help="allow models that ship their own code (never on by default)",
                                     group=MODEL)
    family: str | None = option(None, help="model family (default: train_config.yaml, else from config.json)",
                                group=MODEL)
    prompt: str | None = option(None, help="instruction (default: train_config.yaml's, else the family's); "
                                           "'' for none", group=MODEL)
    image_longest_edge: int | None = option(
        None, help="resize images to this longest edge (SmolVLM: 512 = one crop, the cheap setting)", group=MODEL,
        type=positive_int)
    image_splitting: bool | None = option(
        None, help="SmolVLM image splitting (16 crops + 1: ~17x the vision compute); default: processor's",
        group=MODEL)
    max_images: int | None = option(None, help="caption only the first N images", group=DATA, type=positive_int)
    images_dir: str | None = option(None, help="images folder for COCO json datasets", group=DATA)
    caption_transform: str = option(
        "none", help="score against references rewritten by this transform (a style fine-tune against references "
                     "in its style: the training's data.caption_transform); recorded in metrics.json",
        group=DATA, choices=list(CAPTION_TRANSFORM_NAMES))
    shuffle: bool = option(False, help="a seeded random selection instead of the first N", group=DATA)
    seed: int = option(0, help="seeds --shuffle and --sample (default 0)", group=DATA)
    skip_bad_images: bool = option(
        False, help="caption around images that cannot be read: each is listed with its reason in metrics.json and "
                    "the report, and n_images counts the scored ones (default: stop at the first, naming it; the "
                    "run resumes once it is fixed)", group=DATA)
    max_pixels: int | None = option(
        MAX_PIXELS, help=f"refuse images over this many pixels (a decompression-bomb guard; default {MAX_PIXELS:,})",
        group=DATA, type=positive_int)
    batch_size: int = option(8, help="images captioned at once (default 8)", group=DECODING, type=positive_int)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    #: metric names passed to eval.scoring.score (None: all)
    metrics: list[str] | None = option(
        None, help="only these metrics (default all; METEOR costs a ~10 s JVM start)", group=OUTPUT, nargs="+")
    tokenize: bool = option(True, help="score without the PTB tokenizer", group=OUTPUT)
    report: bool = option(True, help="skip report.html", group=OUTPUT)
    report_rows: int = option(100, help="report.html shows this many worst and best images (default 100)",
                              group=OUTPUT, type=positive_int)
    overwrite: bool = option(False, help="discard what --out holds (journal, results)", group=OUTPUT)
    progress: bool = option(True, help="no progress bar", group=OUTPUT)

    def __post_init__(self):
        self.out = Path(self.out)
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        if self.max_images is not None and self.max_images < 1:
            raise UserError("--max-images must be at least 1")
        if not 0 <= self.seed < 2**32:  # the range GenerationSettings takes for --sample's seed
            raise UserError(f"--seed must be from 0 to 2**32 - 1 (got {self.seed})")
        if self.generation.num_captions != 1:
            raise UserError("generate writes one caption per image: --num-captions must be 1")
        if self.image_longest_edge is not None and self.image_longest_edge < 1:
            raise UserError("--image-longest-edge must be a positive number of pixels")
        if self.report_rows < 1:
            raise UserError("--report-rows must be at least 1")
        if self.int8_batches and self.quantize != "int8":
            raise UserError("--int8-batches goes with --quantize int8 (other precisions batch anyway)")


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


# --------------------------------------------------------------------------- batches


def split_batches(ids: list, batch_size: int) -> list[list]:
    """The split's image ids in fixed batches (batch ``i`` is images ``i*B .. i*B+B-1``), in
    their JSON form, as journal lines hold them."""
    return [json_ids(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]


def caption_batch(cfg: GenerateConfig, captioner, dataset, indices: range) -> list[str | dict]:
    """One batch's journal entries: the caption of each image of ``dataset[indices]``, captioned
    together, or ``{"skipped": reason}`` for an image that cannot be read (--skip-bad-images;
    without it the first such image stops the run)."""
    from captioning.generation import caption_images

    images, slots = [], []
    for i in indices:
        try:
            images.append(dataset[i].load_image())
            slots.append(None)
        except UserError as e:
            if not cfg.skip_bad_images:
                raise UserError(f"{e} (pass --skip-bad-images to caption around it; this run resumes "
                                "where it stopped once the file is fixed)") from None
            slots.append({"skipped": " ".join(str(e).split())})
    captions = (caption_images(captioner, images, None, cfg.generation, batch_size=len(images),
                               int8_batches=cfg.int8_batches) if images else [])
    got = iter(c[0] for c in captions)
    return [next(got) if s is None else s for s in slots]


def caption_into_journal(cfg: GenerateConfig, procs: Processes, captioner, dataset, batches: list[list],
                         mine: list[int], journal) -> None:
    """Caption this process's batches, appending each to its journal as soon as it is done
    (a kill loses only the batch in progress)."""
    bar = _progress(cfg, procs, sum(len(batches[b]) for b in mine))
    try:
        for b in mine:
            start = b * cfg.batch_size
            captions = caption_batch(cfg, captioner, dataset, range(start, start + len(batches[b])))
            append(journal, {"batch": b, "image_ids": batches[b], "captions": captions})
            if bar is not None:
                bar.update(len(captions))
    finally:
        if bar is not None:
            bar.close()


def collect(out: Path, fp: str, settings: dict, batches: list[list], dataset) -> tuple[list[dict], list[dict]]:
    """(predictions, skipped images) from the journals of all processes, once every batch is in
    them; writes predictions.json. Never a partial one: a missing batch is an error."""
    done, _ = load_done(out, fp, settings, batches)
    missing = [b for b in range(len(batches)) if b not in done]
    if missing:  # a process died without raising
        raise RuntimeError(f"batches {missing[:5]} were not captioned; run the same command again to finish")
    entries = list(zip(dataset, (c for b in range(len(batches)) for c in done[b])))
    predictions = [{"image_id": ex.image_id, "caption": cap} for ex, cap in entries if isinstance(cap, str)]
    skipped = [{"image_id": ex.image_id, "file": ex.file_name, "reason": cap["skipped"]}
               for ex, cap in entries if isinstance(cap, dict)]
    write_json(out / PREDICTIONS, predictions)
    return predictions, skipped


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
        "quantize": captioner.quantize,
        **({"int8_batches": True} if cfg.int8_batches else {}),  # absent otherwise: older journals still resume
        "device": captioner.device.type,
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_generate(cfg: GenerateConfig, *, scorer: Any = None, command: str | None = None,
                 log: Callable[[str], None] = _log) -> GenerateResult | None:
    """Caption ``cfg.split`` of ``cfg.dataset`` with ``cfg.model`` and score it into ``cfg.out``,
    as ``cfg.out``'s one writer (captioning.files.output_lock, held by the main process of a
    sharded run: a second run, or a resume while the first lives, is refused, not interleaved
    into the journal). See :func:`_run_generate`."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"--out {cfg.out} is a file: pass a folder")
    main_process = os.environ.get("RANK", "0") == "0"
    with output_lock(cfg.out, "--out") if main_process else contextlib.nullcontext():
        return _run_generate(cfg, scorer=scorer, command=command, log=log)


def _run_generate(cfg: GenerateConfig, *, scorer: Any, command: str | None,
                  log: Callable[[str], None]) -> GenerateResult | None:
    """Caption ``cfg.split`` of ``cfg.dataset`` with ``cfg.model`` and score it into ``cfg.out``.

    Returns the result on the main process and None on the other processes of a sharded
    run. ``scorer``: a warm :class:`eval.scoring.Scorer` to reuse (tests, repeated evals).
    """
    from eval.provenance import describe_model

    t_start = time.perf_counter()
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also transformers' "Loading weights" bars
    procs = Processes()
    out = cfg.out
    dataset = _load_split(cfg, procs, log)
    captioner = _load_model(cfg, procs)
    model_block = describe_model(captioner)
    settings = _settings(cfg, captioner, dataset, model_block)
    fp = fingerprint(settings)
    batches = split_batches([ex.image_id for ex in dataset], cfg.batch_size)
    if procs.main:
        _prepare_out(cfg, captioner, dataset, model_block, settings, procs, log)
    procs.barrier()

    # Every process reads every journal before any process writes, so all plan alike.
    done, journals = load_done(out, fp, settings, batches)
    finished = finished_run(out, fp, settings, [ex.image_id for ex in dataset]) if not journals else None
    procs.barrier()

    n_resumed = sum(len(batches[b]) for b in done)
    mine = procs.share([b for b in range(len(batches)) if b not in done] if finished is None else [])
    t_gen = time.perf_counter()
    if mine:
        with open_journal(journal_path(out, procs.rank), journals, fp, settings) as journal:
            if procs.main and n_resumed:
                log(f"generate: resuming, {n_resumed}/{len(dataset)} images already captioned in {out}")
            caption_into_journal(cfg, procs, captioner, dataset, batches, mine, journal)
    procs.barrier()
    generation_s = time.perf_counter() - t_gen  # after the barrier: the slowest shard counts
    if not procs.main:
        return None

    if finished is not None:
        predictions, skipped = finished
        log(f"generate: {out / PREDICTIONS} already holds this run's predictions; scoring them again")
    else:
        predictions, skipped = collect(out, fp, settings, batches, dataset)
    n_new = 0 if finished is not None else len(dataset) - n_resumed  # all shards together
    timing = {"generation_s": generation_s, "images_captioned": n_new, "images_resumed": n_resumed,
              "processes": procs.world}
    return _score_and_record(cfg, dataset, captioner, predictions, skipped, timing, model_block, settings, fp,
                             scorer=scorer, command=command, t_start=t_start, log=log)


def _load_split(cfg: GenerateConfig, procs: Processes, log: Callable[[str], None]):
    """The dataset split to caption, its images checked lazily (at --max-pixels)."""
    from captioning.data import load_captions

    dataset = load_captions(cfg.dataset, cfg.split, max_samples=cfg.max_images, shuffle=cfg.shuffle,
                            seed=cfg.seed, images_dir=cfg.images_dir).with_caption_transform(
        cfg.caption_transform).with_max_pixels(cfg.max_pixels)
    ids = [ex.image_id for ex in dataset]
    if cfg.max_images is not None and len(ids) < cfg.max_images and procs.main:
        log(f"note: --max-images {cfg.max_images}, but split {cfg.split!r} of {cfg.dataset} holds {len(ids)} "
            f"images: captioning all {len(ids)} (metrics.json records n_images {len(ids)})")
    if len(set(map(repr, ids))) != len(ids):
        raise UserError(f"{cfg.dataset}: split {cfg.split!r} lists an image id twice; fix the annotations")
    return dataset


def _load_model(cfg: GenerateConfig, procs: Processes):
    from captioning.loading import load_captioner

    device = cfg.device
    if procs.device is not None and device == "auto":
        device = procs.device  # one GPU per process under accelerate launch
    return load_captioner(cfg.model, revision=cfg.revision, adapter=cfg.adapter, dtype=cfg.dtype, device=device,
                          load_in_4bit=cfg.load_in_4bit, trust_remote_code=cfg.trust_remote_code,
                          family=cfg.family, prompt=cfg.prompt, image_longest_edge=cfg.image_longest_edge,
                          image_splitting=cfg.image_splitting, quantize=cfg.quantize, prepack=cfg.prepack)


def _prepare_out(cfg: GenerateConfig, captioner, dataset, model_block: dict, settings: dict, procs: Processes,
                 log: Callable[[str], None]) -> None:
    """Main process: empty ``out`` on --overwrite, create it, and print the resolved config."""
    out = cfg.out
    if cfg.overwrite:
        for p in journal_files(out) + [out / PREDICTIONS, out / METRICS, out / REPORT]:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    config_echo = {"model": model_block["id"], "adapter": model_block["adapter"], "family": model_block["family"],
                   "dataset": f"{dataset.source} [{dataset.split}]", "images": len(dataset),
                   "prompt": captioner.prompt, "batch_size": cfg.batch_size, "dtype": settings["dtype"],
                   "device": str(captioner.device), "generation": cfg.generation.to_dict(),
                   "processes": procs.world, "out": str(out)}
    log("generate: " + json.dumps(config_echo, ensure_ascii=False))


def _scene_accuracy(dataset, predictions: list[dict], log: Callable[[str], None]) -> tuple[dict | None, dict | None]:
    """eval.scene's corpus numbers (for metrics.json) and per-image scores (for report.html)
    when the dataset records each image's scene (the shapes set), over the images that were
    captioned; (None, None) for other datasets."""
    from eval.scene import scene_accuracy

    scenes = dataset.scenes()
    if scenes is None:
        return None, None
    captioned = {p["image_id"] for p in predictions}
    result = scene_accuracy({i: s for i, s in scenes.items() if i in captioned}, predictions)
    per_image = result.pop("per_image")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
    log(f"scene accuracy (captions checked against each image's objects): {shown}")
    return result, per_image


def _score_and_record(cfg: GenerateConfig, dataset, captioner, predictions: list[dict], skipped: list[dict],
                      timing: dict, model_block: dict, settings: dict, fp: str, *, scorer: Any,
                      command: str | None, t_start: float, log: Callable[[str], None]) -> GenerateResult:
    """Score the predictions; write report.html and metrics.json; remove the journals."""
    from eval import scoring
    from eval.provenance import eval_record

    out = cfg.out
    if skipped:
        log(f"note: --skip-bad-images: {len(skipped)} of {len(dataset)} images could not be read and were not "
            f"scored (listed under skipped_images in metrics.json), first: {skipped[0]['file']}: "
            f"{skipped[0]['reason']}")
    t_score = time.perf_counter()
    # an empty caption is what the model said (it stopped at once): scored as matching nothing
    # and listed, never an abort of a long run
    result = scoring.score(dataset.references_coco(), predictions, tokenize=cfg.tokenize, metrics=cfg.metrics,
                           allow_empty=True, allow_missing=bool(skipped), scorer=scorer)
    if result["empty_captions"]:
        log(f"note: {len(result['empty_captions'])} of {len(predictions)} captions are empty (the model stopped at "
            "once); each scores 0 and is listed under empty_captions in metrics.json")
    scene, scene_per_image = _scene_accuracy(dataset, predictions, log)
    scoring_s = time.perf_counter() - t_score
    n_new, generation_s = timing["images_captioned"], timing["generation_s"]
    described = {
        "skipped_images": skipped,
        **({"scene_accuracy": scene} if scene else {}),
        "dataset": _dataset_block(cfg, dataset),
        "model": model_block,
        "generation": cfg.generation.to_dict() | {"image_longest_edge": cfg.image_longest_edge,
                                                  "image_splitting": cfg.image_splitting},
        "prompt": captioner.prompt,
        "batch_size": cfg.batch_size,
        "images_per_forward": images_per_forward(captioner, cfg.batch_size, cfg.int8_batches),
        "dtype": settings["dtype"],
        "dtype_requested": cfg.dtype,
        "load_in_4bit": cfg.load_in_4bit,
        "quantize": captioner.quantize,
        "device": str(captioner.device),
        "device_requested": cfg.device,
    }
    record = eval_record(
        result, described, {"tokenize": cfg.tokenize, "metrics": cfg.metrics}, command=command,
        timing={"generation_s": round(generation_s, 3), "scoring_s": round(scoring_s, 3),
                "images_captioned": n_new, "images_resumed": timing["images_resumed"],
                "processes": timing["processes"],
                "images_per_s": round(n_new / generation_s, 4) if n_new and generation_s > 0 else None},
        # the settings that decide the captions, and their hash: a later run into the same
        # --out compares against them, and so can anyone comparing two metrics.json files
        fingerprint={"sha256": fp, "settings": settings})
    if cfg.report:
        from eval.report import write_report

        write_report(out / REPORT, record, dataset, predictions, result, rows=cfg.report_rows,
                     scene_scores=scene_per_image)
    record["seconds"] = round(time.perf_counter() - t_start, 3)
    write_record(out / METRICS, KIND_EVAL, record)
    for p in journal_files(out):  # the run is complete: its journal has served its purpose
        p.unlink(missing_ok=True)
    return GenerateResult(record=record, predictions=predictions, score=result, out=out)


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
