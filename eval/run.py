"""Caption a dataset, score predictions, reproduce a published eval, compare runs.

    python eval/run.py generate --model DIR_OR_ID --dataset data/shapes --split test --out runs/x
    python eval/run.py score --references refs.json --predictions preds.json [--out metrics.json]
    python eval/run.py reproduce org/model            # or a local release folder
    python eval/run.py compare runs/a runs/b [--markdown]

Shard generate over processes (one GPU each; on CPU-only machines add --multi_gpu, which
there means "several processes", or use torchrun --nproc_per_node 2):

    accelerate launch --num_processes 2 eval/run.py generate ...

Metrics are pycocoevalcap's (0-1 scale); see eval/scoring/. Every mistake is reported as
one line (`error: ...`) with exit code 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioning.cli import ArgumentParser, guarded, pop_debug
from captioning.errors import UserError
from captioning.files import check_not_input, check_writable, write_json
from captioning.options import add_options, option_values, positive_int
from captioning.records import KIND_EVAL, write_record
from captioning.vocabulary import BLEU_NAMES, COCO_METRICS

PROG = "python eval/run.py"


def _metric_list(values: Sequence[str] | None) -> list[str] | None:
    """--metrics Bleu_4 CIDEr and --metrics Bleu_4,CIDEr both work."""
    if not values:
        return None
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


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
    p.add_argument("--metrics", nargs="+", help=f"only these ({BLEU_NAMES[0]}..{BLEU_NAMES[-1]} or Bleu, "
                                                 f"{', '.join(COCO_METRICS[len(BLEU_NAMES):])}); default all")
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
    p.add_argument("--max-images", type=positive_int,
                   help="check only the first N recorded images (needs the release's predictions.json)")
    p.add_argument("--revision", help="hub revision of the release (default: main)")
    p.add_argument("--out", help="keep the reproduced run in this folder (default: a temporary folder)")
    p.add_argument("--dataset", help="the recorded dataset at another path (its content hash must match)")
    p.add_argument("--images-dir", help="images folder for COCO json datasets")
    p.add_argument("--metrics", nargs="+", help="compare only these metrics (default: all recorded)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", help="default: the recorded dtype on the same kind of device, else auto")
    p.add_argument("--batch-size", type=positive_int, help="default: the recorded batch size")
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
    """The generate flags: GenerateConfig's and GenerationSettings' fields (their help lives there)."""
    from captioning.generation import GenerationSettings
    from eval.generate import DATA, DECODING, MODEL, OUTPUT, GenerateConfig

    groups = {name: p.add_argument_group(name) for name in (MODEL, DATA, DECODING, OUTPUT)}
    add_options(p, GenerateConfig, groups)
    add_options(p, GenerationSettings, groups)


def generate_config(args: argparse.Namespace):
    """GenerateConfig from parsed generate flags."""
    from captioning.generation import GenerationSettings
    from eval.generate import GenerateConfig

    # --seed seeds --sample too
    settings = GenerationSettings(**option_values(GenerationSettings, args), seed=args.seed if args.do_sample else None)
    return GenerateConfig(**option_values(GenerateConfig, args) | {"metrics": _metric_list(args.metrics)},
                          generation=settings)


# --------------------------------------------------------------------------- commands


def cmd_score(args: argparse.Namespace, *, scorer: Any = None, command: str | None = None) -> int:
    from eval import scoring
    from eval.provenance import eval_record

    t0 = time.perf_counter()
    for flag, value in (("--out", args.out), ("--per-image", args.per_image)):
        if value and Path(value).is_dir():  # checked before scoring, which can take minutes
            raise UserError(f"{flag} {value} is a folder: pass a file name such as {Path(value) / 'metrics.json'}")
        if value:
            check_writable(Path(value).parent, flag)
            check_not_input(value, flag, {"--references": args.references, "--predictions": args.predictions})
    if args.out and args.per_image:
        check_not_input(args.per_image, "--per-image", {"--out": args.out})
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
        described = {"dataset": {"source": str(Path(args.references).resolve()), "split": None,
                                 "hash": references_hash(refs)},
                     "predictions": str(Path(args.predictions).resolve())}
        settings = {"tokenize": not args.no_tokenize, "metrics": _metric_list(args.metrics),
                    "allow_missing": args.allow_missing, "scored_subset": result.get("scored_subset", False)}
        record = eval_record(result, described, settings, command=command, t_start=t0)
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
    files = ["predictions.json", "metrics.json"] + (["report.html"] if args.report else [])
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
    seen: dict[Path, str] = {}
    for given, run in zip(args.runs, runs):
        first = seen.setdefault(run.eval.path.resolve(), given)
        if first != given or list(args.runs).count(given) > 1:
            raise UserError(f"{given}: the same run as {first} (given twice): compare different runs")
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
    # `python eval/run.py` puts eval/ first on sys.path: no module there shares a name with one
    # imported from elsewhere (tests/test_eval_run.py checks), and `eval` is the installed package
    sys.exit(main())
