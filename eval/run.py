"""Caption a dataset, score predictions, reproduce a published eval, compare runs.

    python eval/run.py generate --model DIR_OR_ID --dataset data/shapes --split test --out runs/x
    python eval/run.py score --references refs.json --predictions preds.json [--out metrics.json]
    python eval/run.py reproduce org/model            # or a local release folder
    python eval/run.py compare runs/a runs/b [--markdown]

Shard generate over processes (one GPU each; on CPU-only machines add --multi_gpu, which
there means "several processes", or use torchrun --nproc_per_node 2):

    accelerate launch --num_processes 2 eval/run.py generate ...

Metrics are pycocoevalcap's (0-1 scale); see eval/scoring.py. Every mistake is reported as
one line (`error: ...`) with exit code 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python eval/run.py` puts eval/ itself first on sys.path, where eval/*.py could shadow
    # other modules; the `eval` package is imported from the repository root instead.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import time
from collections.abc import Sequence
from typing import Any

from captioning.cli import ArgumentParser, guarded, pop_debug
from captioning.data import CAPTION_TRANSFORMS
from captioning.errors import UserError
from captioning.images import MAX_PIXELS
from captioning.records import KIND_EVAL, check_writable, write_json, write_record

PROG = "python eval/run.py"


def _metric_list(values: Sequence[str] | None) -> list[str] | None:
    """--metrics Bleu_4 CIDEr and --metrics Bleu_4,CIDEr both work."""
    if not values:
        return None
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, at least 1, or auto") from None


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    # ---- score
    p = sub.add_parser("score", help="COCO caption metrics of a predictions file",
                       description="Score COCO-format predictions against COCO caption annotations "
                                   "exactly as pycocoevalcap's COCOEvalCap does (0-1 scale).")
    p.add_argument("--references", required=True, help="COCO caption annotations JSON")
    p.add_argument("--predictions", required=True, help='COCO results JSON: [{"image_id", "caption"}]')
    p.add_argument("--out", help="write metrics.json here (atomically)")
    p.add_argument("--per-image", help="also write the per-image scores to this JSON file")
    p.add_argument("--no-tokenize", action="store_true",
                   help="score the strings as given instead of PTB-tokenizing them first")
    p.add_argument("--metrics", nargs="+", help="only these (Bleu_1..Bleu_4 or Bleu, METEOR, ROUGE_L, CIDEr, "
                                                 "SPICE); default all")
    p.add_argument("--allow-empty", action="store_true",
                   help="score an empty caption as one that matches nothing (all its scores 0) instead of refusing")
    p.add_argument("--allow-missing", action="store_true",
                   help="score only the images that have a prediction (numbers then differ from full-set ones)")

    # ---- generate
    p = sub.add_parser("generate", help="caption a dataset split, then score it",
                       description="Caption a split with the core's batched captioning, write "
                                   "OUT/predictions.json, OUT/metrics.json and OUT/report.html. "
                                   "Killed runs resume when started again with the same --out.")
    _add_generate_args(p)

    # ---- reproduce
    from eval.reproduce import DEFAULT_TOLERANCE

    p = sub.add_parser("reproduce", help="re-run the eval a release records and compare",
                       description="Read metrics.json of a release (hub id or local folder), re-run that eval "
                                   "with the recorded settings and compare. Exit 0: every metric agrees within "
                                   "the tolerance; 1: some do not; 2: the eval could not be run.")
    p.add_argument("source", metavar="ID_OR_DIR", help="hub model id (org/name) or a local release folder")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest absolute difference per metric on the 0-1 scale (default {DEFAULT_TOLERANCE}; "
                        "0 demands equality)")
    p.add_argument("--max-images", type=_positive,
                   help="check only the first N recorded images (needs the release's predictions.json)")
    p.add_argument("--revision", help="hub revision of the release (default: main)")
    p.add_argument("--out", help="keep the reproduced run in this folder (default: a temporary folder)")
    p.add_argument("--dataset", help="the recorded dataset at another path (its content hash must match)")
    p.add_argument("--images-dir", help="images folder for COCO json datasets")
    p.add_argument("--metrics", nargs="+", help="compare only these metrics (default: all recorded)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", help="default: the recorded dtype on the same kind of device, else auto")
    p.add_argument("--batch-size", type=_positive, help="default: the recorded batch size")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow models that ship their own code (never on by default)")
    p.add_argument("--no-progress", action="store_true")

    # ---- compare
    p = sub.add_parser("compare", help="several runs' metrics in one table",
                       description="One table of several runs' metrics; runs on other references or another "
                                   "number of images than the first are marked as not comparable.")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_METRICS", help="run folders or metrics.json files")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--metrics", nargs="+", help="only these columns")
    return parser


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="hub id, model folder, or training output folder")
    g.add_argument("--adapter", help="LoRA adapter folder written by training/train.py")
    g.add_argument("--revision", help="hub revision (branch, tag or commit)")
    g.add_argument("--family", help="model family (default: train_config.yaml, else from config.json)")
    g.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, fp16")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--load-in-4bit", action="store_true", help="4-bit NF4 weights (bitsandbytes)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow models that ship their own code (never on by default)")
    g.add_argument("--prompt", help="instruction (default: train_config.yaml's, else the family's); "
                                    "'' for none")
    g.add_argument("--image-longest-edge", type=_positive,
                   help="resize images to this longest edge (SmolVLM: 512 = one crop, the cheap setting)")
    g.add_argument("--image-splitting", action=argparse.BooleanOptionalAction, default=None,
                   help="SmolVLM image splitting (16 crops + 1: ~17x the vision compute); default: processor's")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="COCO folder/json, image folder, or known hub dataset id")
    g.add_argument("--split", required=True)
    g.add_argument("--max-images", type=_positive, help="caption only the first N images")
    g.add_argument("--shuffle", action="store_true", help="a seeded random selection instead of the first N")
    g.add_argument("--seed", type=int, default=0, help="seeds --shuffle and --sample (default 0)")
    g.add_argument("--images-dir", help="images folder for COCO json datasets")
    g.add_argument("--max-pixels", type=_positive, default=MAX_PIXELS,
                   help=f"refuse images over this many pixels (a decompression-bomb guard; default {MAX_PIXELS:,})")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="caption around images that cannot be read: each is listed with its reason in metrics.json "
                        "and the report, and n_images counts the scored ones (default: stop at the first, naming "
                        "it; the run resumes once it is fixed)")
    g.add_argument("--caption-transform", default="none", choices=list(CAPTION_TRANSFORMS),
                   help="score against references rewritten by this transform (a style fine-tune against "
                        "references in its style: the training's data.caption_transform); recorded in metrics.json")

    g = p.add_argument_group("decoding")
    g.add_argument("--batch-size", type=_positive, default=8)
    g.add_argument("--parallel-batches", type=_positive_or_auto, default="auto",
                   help="batches captioned at once (default auto: 2 on a CPU, each on half the threads; "
                        "1 on a GPU); changes speed and memory, never the captions")
    g.add_argument("--num-beams", type=_positive, default=1)
    g.add_argument("--max-new-tokens", type=_positive, default=30)
    g.add_argument("--min-new-tokens", type=int)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy/beam search (seeded by --seed)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--repetition-penalty", type=float, default=1.0)

    g = p.add_argument_group("scoring and output")
    g.add_argument("--out", required=True, help="output folder (resumes a killed run with the same settings)")
    g.add_argument("--metrics", nargs="+", help="only these metrics (default all; METEOR costs a ~10 s JVM start)")
    g.add_argument("--no-tokenize", action="store_true", help="score without the PTB tokenizer")
    g.add_argument("--no-report", action="store_true", help="skip report.html")
    g.add_argument("--report-rows", type=_positive, default=100,
                   help="report.html shows this many worst and best images (default 100)")
    g.add_argument("--overwrite", action="store_true", help="discard what --out holds (journal, results)")
    g.add_argument("--no-progress", action="store_true")


def generate_config(args: argparse.Namespace):
    """GenerateConfig from parsed generate flags."""
    from captioning.generation import GenerationSettings
    from eval.generate import GenerateConfig

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, num_beams=args.num_beams,
        do_sample=args.sample, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, seed=args.seed if args.sample else None)
    return GenerateConfig(
        model=args.model, adapter=args.adapter, revision=args.revision, dtype=args.dtype, device=args.device,
        load_in_4bit=args.load_in_4bit, trust_remote_code=args.trust_remote_code, family=args.family,
        prompt=args.prompt, image_longest_edge=args.image_longest_edge, image_splitting=args.image_splitting,
        dataset=args.dataset, split=args.split, max_images=args.max_images, images_dir=args.images_dir,
        caption_transform=args.caption_transform, skip_bad_images=args.skip_bad_images,
        max_pixels=args.max_pixels, shuffle=args.shuffle,
        seed=args.seed, batch_size=args.batch_size, parallel_batches=args.parallel_batches,
        generation=settings, metrics=_metric_list(args.metrics), tokenize=not args.no_tokenize,
        report=not args.no_report, report_rows=args.report_rows, overwrite=args.overwrite,
        progress=not args.no_progress, out=Path(args.out))


# --------------------------------------------------------------------------- commands


def cmd_score(args: argparse.Namespace, *, scorer: Any = None, command: str | None = None) -> int:
    from eval import scoring
    from eval.provenance import library_versions, utc_now

    t0 = time.perf_counter()
    for flag, value in (("--out", args.out), ("--per-image", args.per_image)):
        if value and Path(value).is_dir():  # checked before scoring, which can take minutes
            raise UserError(f"{flag} {value} is a folder: pass a file name such as {Path(value) / 'metrics.json'}")
        if value:
            check_writable(Path(value).parent, flag)
    refs = scoring.load_json(args.references, "references")
    preds = scoring.load_json(args.predictions, "predictions")
    result = scoring.score(refs, preds, tokenize=not args.no_tokenize, metrics=_metric_list(args.metrics),
                           allow_missing=args.allow_missing, allow_empty=args.allow_empty, scorer=scorer)
    print(scoring.format_table(result))
    if result.get("scored_subset"):
        print(f"note: --allow-missing: scored only the {result['n_images']} images that have a prediction")
    if result["empty_captions"]:
        print(f"note: --allow-empty: {len(result['empty_captions'])} empty caption(s) scored as matching nothing")
    if args.out:
        record = {
            "metrics": result["metrics"], "unavailable": result.get("unavailable", {}),
            "extras": result.get("extras", {}), "n_images": result["n_images"],
            "empty_captions": result["empty_captions"],
            "dataset": {"source": str(Path(args.references).resolve()), "split": None,
                        "hash": references_hash(refs)},
            "predictions": str(Path(args.predictions).resolve()),
            "scoring": {"tokenize": not args.no_tokenize, "metrics": _metric_list(args.metrics),
                        "allow_missing": args.allow_missing, "scored_subset": result.get("scored_subset", False)},
            "versions": library_versions(), "command": command, "created": utc_now(),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_record(args.out, KIND_EVAL, record)
        print(f"wrote {args.out}")
    if args.per_image:
        rows = [{"image_id": k, **v} for k, v in result.get("per_image", {}).items()]
        write_json(args.per_image, rows)
        print(f"wrote {args.per_image}")
    return 0


def references_hash(refs: dict) -> str:
    """The content hash of COCO references, equal to CaptionDataset.content_hash() of the same
    split (so `score` and `generate` records of one split compare)."""
    from captioning.data import CaptionDataset, CaptionExample

    grouped: dict = {}
    for ann in refs.get("annotations", []):
        grouped.setdefault(repr(ann["image_id"]), (ann["image_id"], []))[1].append(ann["caption"])
    examples = [CaptionExample(image_id, caps, None) for image_id, caps in grouped.values()]
    return CaptionDataset(examples, source="", split="").content_hash()


def cmd_generate(args: argparse.Namespace, *, scorer: Any = None, command: str | None = None) -> int:
    from eval import scoring
    from eval.generate import run_generate

    result = run_generate(generate_config(args), scorer=scorer, command=command)
    if result is None:  # a non-main process of a sharded run: the main one reports
        return 0
    print(scoring.format_table({**result.score, "metrics": result.record["metrics"]}))
    files = ["predictions.json", "metrics.json"] + ([] if args.no_report else ["report.html"])
    print("wrote " + ", ".join(str(result.out / f) for f in files))
    return 0


def cmd_reproduce(args: argparse.Namespace, *, scorer: Any = None, command: str | None = None) -> int:
    from eval.reproduce import format_comparison, reproduce

    recorded, new, comparison = reproduce(
        args.source, tolerance=args.tolerance, max_images=args.max_images, revision=args.revision, out=args.out,
        dataset=args.dataset, images_dir=args.images_dir, metrics=_metric_list(args.metrics), device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress, scorer=scorer, command=command)
    print(format_comparison(recorded, new, comparison))
    return comparison.exit_code


def cmd_compare(args: argparse.Namespace, **_: Any) -> int:
    from eval.compare import format_compare, load_run

    runs = [load_run(p) for p in args.runs]
    print(format_compare(runs, _metric_list(args.metrics), markdown=args.markdown))
    return 0


COMMANDS = {"score": cmd_score, "generate": cmd_generate, "reproduce": cmd_reproduce, "compare": cmd_compare}


def main(argv: Sequence[str] | None = None, *, scorer: Any = None) -> int:
    """Run one subcommand; returns the exit code. ``scorer``: a warm eval.scoring.Scorer to
    reuse (tests and long-lived callers), so METEOR's JVM starts once."""
    from eval.provenance import command_line

    argv, debug = pop_debug(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 2
    return guarded(lambda: COMMANDS[args.command](args, scorer=scorer, command=command_line(argv, PROG)),
                   debug=debug, prefix="cannot reproduce: " if args.command == "reproduce" else "")


if __name__ == "__main__":
    sys.exit(main())
