"""Does --quantize int8 change what trained models say? The quality gate for int8 serving, and
the check that prepacked fp32 (what eval generate serves) says exactly what plain fp32 says.

    python bench/int8_quality.py --dataset DIR --split test \\
        --model demo=demo_out/runs/shapes-demo \\
        --model demo-style=demo_out/runs/shapes-demo-style:linguistic_errors [--max-images 200]

Each model (a trained folder or adapter; ``:TRANSFORM`` scores against references in that
caption style) is evaluated three times by eval.generate.run_generate on the same images,
greedy: fp32-plain (nn.Linear layers: the toolkit before issue 20), fp32 (prepacked Linear
layers, captioning.kernels.prepack_linear: what every entry point serves) and int8
(captioning.kernels.quantize_int8: int8 weights + dynamic int8 activations). Reported side by
side: CIDEr, scene accuracy on the synthetic shapes set (exact object sets, object
precision/recall), and the share of images whose caption is identical to fp32-plain's.

The gate (issue 20): int8 may cost at most 2% relative CIDEr and 1 point of scene accuracy
(exact); a family that misses it keeps fp32 as its CPU default (Family.int8_on_cpu).
Prepacked fp32 must give every image the same caption as fp32-plain.

--batched-int8 adds a probe, int8-batched: int8 with --batch-size images per forward (eval
generate --int8-batches; by default int8 takes one image per forward, so that a caption never
depends on its neighbours): how far its captions move from one-at-a-time int8's.

Writes bench/results/int8_quality.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "int8_quality.json"
MAX_CIDER_DROP = 0.02  # relative
MAX_EXACT_DROP = 0.01  # absolute (1 point)


VARIANTS = {"fp32-plain": "none", "fp32": "none", "int8": "int8"}  # variant -> --quantize
PROBE = "int8-batched"  # with --batched-int8: int8 with --batch-size images per forward (--int8-batches)


def evaluate(model: str, transform: str, variant: str, args, out: Path, scorer) -> dict[str, Any]:
    from captioning.generation import GenerationSettings
    from eval.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(model=model, dataset=str(args.dataset), split=args.split, out=out, dtype="fp32",
                         device="cpu", quantize="int8" if variant == PROBE else VARIANTS[variant],
                         int8_batches=variant == PROBE, max_images=args.max_images,
                         trust_remote_code=args.trust_remote_code,
                         batch_size=args.batch_size, caption_transform=transform, metrics=["CIDEr"], report=False,
                         overwrite=True, generation=GenerationSettings(max_new_tokens=args.max_new_tokens),
                         prepack=variant != "fp32-plain")  # plain nn.Linear layers: the baseline
    record = run_generate(cfg, scorer=scorer, log=lambda *_: None).record
    preds = json.loads((out / "predictions.json").read_text())
    return {"record": record, "captions": {str(p["image_id"]): p["caption"] for p in preds}}


def compare(name: str, model: str, transform: str, args, work: Path, scorer) -> dict[str, Any]:
    variants = [*VARIANTS, PROBE] if args.batched_int8 else list(VARIANTS)
    runs = {v: evaluate(model, transform, v, args, work / f"{name}-{v}", scorer) for v in variants}
    row: dict[str, Any] = {"model": model, "caption_transform": transform,
                           "family": runs["fp32"]["record"]["model"]["family"]}
    ref = runs["fp32-plain"]["captions"]
    for v, run in runs.items():
        rec = run["record"]
        scene = rec.get("scene_accuracy") or {}
        row[v] = {"CIDEr": rec["metrics"]["CIDEr"], "exact": scene.get("exact"),
                  "object_precision": scene.get("object_precision"), "object_recall": scene.get("object_recall"),
                  "identical_captions": sum(ref[k] == run["captions"].get(k) for k in ref) / max(1, len(ref))}
    if PROBE in runs:
        one = runs["int8"]["captions"]
        row[PROBE]["identical_to_int8"] = sum(one[k] == runs[PROBE]["captions"].get(k) for k in one) / max(1, len(one))
    row["n_images"] = len(ref)
    base, int8 = row["fp32-plain"], row["int8"]
    cider_drop = (base["CIDEr"] - int8["CIDEr"]) / max(base["CIDEr"], 1e-9)
    exact_drop = ((base["exact"] or 0) - (int8["exact"] or 0)) if base["exact"] is not None else 0.0
    row["cider_relative_drop"] = round(cider_drop, 4)
    row["exact_drop"] = round(exact_drop, 4)
    row["passes_gate"] = cider_drop <= MAX_CIDER_DROP and exact_drop <= MAX_EXACT_DROP
    row["prepack_unchanged"] = row["fp32"]["identical_captions"] == 1.0
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/int8_quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH[:TRANSFORM]")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="models that ship their own code (the bridge)")
    parser.add_argument("--batched-int8", action="store_true",
                        help=f"also run {PROBE}: int8 with --batch-size images per forward, to measure how much "
                             "its captions depend on the batch (int8 is served one image per forward)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import torch

    from eval.scoring import Scorer

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"gate": {"max_cider_relative_drop": MAX_CIDER_DROP, "max_exact_drop": MAX_EXACT_DROP},
                              "dataset": str(args.dataset), "split": args.split, "models": {}}
    with tempfile.TemporaryDirectory(prefix="int8-quality-") as tmp, Scorer() as scorer:
        for spec in args.model:
            name, _, rest = spec.partition("=")
            path, _, transform = rest.partition(":")
            result["models"][name] = compare(name, path, transform or "none", args, Path(tmp), scorer)
            print(f"  {name}: done", flush=True)
    from captioning.files import write_json

    write_json(args.out, result)  # creates the folder
    print("| model | family | images | variant | CIDEr | exact object set | identical to fp32-plain |")
    print("|---|---|---|---|---|---|---|")

    def pct(x):
        return "" if x is None else f"{x:.1%}"

    for name, r in result["models"].items():
        for v in [x for x in (*VARIANTS, PROBE) if x in r]:
            to_int8 = f" ({pct(r[v]['identical_to_int8'])} identical to int8)" if v == PROBE else ""
            print(f"| {name} | {r['family']} | {r['n_images']} | {v} | {r[v]['CIDEr']:.3f} | {pct(r[v]['exact'])} | "
                  f"{pct(r[v]['identical_captions'])}{to_int8} |")
        print(f"{name}: int8 gate {'pass' if r['passes_gate'] else 'FAIL'}; prepacked fp32 "
              f"{'unchanged' if r['prepack_unchanged'] else 'CHANGED captions'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
