"""How much faster does --quantize int8 caption on a CPU than full precision, and at what memory?

    python bench/int8_speed.py [--models smolvlm,blip] [--rounds 3] [--batch-size 8] [--threads 2]

Models: random weights at the real published architectures (synthetic.factory, size
"real"): SmolVLM-256M-Instruct with ONE 512 px tile (image splitting off: 64 image tokens)
and BLIP base. Greedy, exactly 20 new tokens (min_new_tokens == max_new_tokens), so speed
does not depend on the random weights. All through captioning.loading.load_captioner and
captioning.generation.caption_images, the code every stage uses.

Variants: fp32-plain (load_captioner's plain nn.Linear layers: the toolkit before issue 20, the
baseline every speedup is measured against); fp32 (prepack=True, what every captioning entry
point serves: each Linear weight laid out once for oneDNN's matmul, sibling q/k/v and gate/up
layers sharing one product, same greedy tokens); fp32-unfused and int8-unfused (only with
--variants: every layer its own product, as before the shared products); int8-batched (only with
--variants: int8 with --batch-size images per forward, caption_images(int8_batches=True) as
eval generate --int8-batches runs it; captions then depend on the batch, see
bench/int8_quality.py --batched-int8); int8
(load_captioner(quantize="int8"): PyTorch's dynamic int8 Linear layers, int8 weights per
channel + activations quantised per call); bf16 (dtype="bf16") only where the CPU has native
bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo). They are loaded side by side
and run in alternating rounds on the same images (absolute times drift on shared
machines; ratios measured side by side do not):
  one image     seconds per image, one at a time;
  batched       images/s with --batch-size images per call (int8 captions one image per
                forward whatever the batch size, so results never depend on the batch: its
                "batched" rate is the rate it serves at);
  text side     (SmolVLM) prefill + 20 decode steps from cached image features, i.e. the
                whole caption minus the vision tower.
Peak RSS: each variant loaded alone in a fresh process, after one caption (ru_maxrss).
Agreement with fp32-plain on these random weights: cosine of the first step's logits and the
share of the 20 greedy tokens that are identical (quality on trained weights is
bench/int8_quality.py's question).

Writes bench/results/int8_speed.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "int8_speed.json"
MODELS = {"smolvlm": "idefics3", "blip": "blip"}
NEW_TOKENS = 20


def native_bf16() -> bool:
    from machine import cpu_flags

    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


BASELINE = "fp32-plain"


VARIANTS = {BASELINE: {"dtype": "fp32"}, "fp32": {"dtype": "fp32", "prepack": True},
            "int8": {"dtype": "fp32", "quantize": "int8"}, "bf16": {"dtype": "bf16"}}
VARIANTS |= {f"{v}-unfused": VARIANTS[v] for v in ("fp32", "int8")} | {"int8-batched": VARIANTS["int8"]}


def load(model_dir: Path, model: str, variant: str):
    import captioning.kernels as kernels
    from captioning.loading import load_captioner

    extra = {"image_splitting": False, "image_longest_edge": 512} if model == "smolvlm" else {}
    groups = kernels.SIBLING_GROUPS
    if variant.endswith("-unfused"):  # every layer its own product: no SiblingProduct
        kernels.SIBLING_GROUPS = ()
    try:
        return load_captioner(str(model_dir), device="cpu", **VARIANTS[variant], **extra)
    finally:
        kernels.SIBLING_GROUPS = groups


def images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(480, 640, 3) * 255).astype("uint8")) for _ in range(n)]


def settings():
    from captioning.generation import GenerationSettings

    return GenerationSettings(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def text_side(cap, image) -> float:
    """Prefill + 20 decode steps with the image features computed beforehand (SmolVLM)."""
    import torch

    fam = cap.family
    inputs = fam.generation_inputs(cap.processor, [image], [cap.prompt])
    with torch.inference_mode():
        pix = {k: v for k, v in inputs.items() if k.startswith("pixel_")}
        feats = fam.image_features(cap.model, pix)
        text_inputs = fam.feature_inputs({**{k: v for k, v in inputs.items() if not k.startswith("pixel_")},
                                          "image_features": torch.cat(feats)})
        return timed(lambda: cap.model.generate(**text_inputs, **settings().generate_kwargs()))


def agreement(ref, other, image) -> dict[str, float]:
    import torch

    fam = ref.family
    out = {}
    with torch.inference_mode():
        inputs = fam.generation_inputs(ref.processor, [image], [ref.prompt])
        kw = settings().generate_kwargs() | {"output_logits": True, "return_dict_in_generate": True}
        a = fam.generate(ref.model, inputs, **kw)
        b = fam.generate(other.model, inputs, **kw)
        out["first_logits_cosine"] = float(torch.nn.functional.cosine_similarity(
            a.logits[0].float().flatten(), b.logits[0].float().flatten(), dim=0))
        ta, tb = fam.new_tokens(a.sequences, inputs)[0], fam.new_tokens(b.sequences, inputs)[0]
        n = min(len(ta), len(tb))
        out["identical_tokens"] = float((ta[:n] == tb[:n]).float().mean())
    return out


def memory(model_dir: Path, model: str, variant: str, threads: int) -> dict[str, float]:
    """MiB, the variant loaded alone in a fresh process: the high-water mark (loading and
    quantising included: VmHWM) and what stays resident after one caption (VmRSS, after a
    garbage collection). VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking
    parent across exec."""
    code = ("import sys, gc, torch; sys.path.insert(0, 'bench'); import int8_speed as b; "
            f"torch.set_num_threads({threads}); "
            f"cap = b.load(__import__('pathlib').Path({str(model_dir)!r}), {model!r}, {variant!r}); "
            "from captioning.generation import caption_images; "
            "caption_images(cap, b.images(1), settings=b.settings()); gc.collect(); "
            "st = {x.split(':')[0]: int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('Vm')}; "
            "print(st['VmHWM'] / 1024, st['VmRSS'] / 1024)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    peak, resident = out.stdout.strip().splitlines()[-1].split()
    return {"peak_rss_mib": round(float(peak), 1), "resident_mib": round(float(resident), 1)}


def run_model(model: str, variants: list[str], rounds: int, batch: int, threads: int, tmp: Path) -> dict[str, Any]:
    from captioning.generation import caption_images
    from synthetic.factory import build_random_model

    model_dir = build_random_model(MODELS[model], tmp / model, size="real")
    caps = {v: load(model_dir, model, v) for v in variants}
    imgs = images(batch)
    for v in variants:  # warm-up: first calls allocate and pick kernels
        caption_images(caps[v], imgs[:1], settings=settings())
    single: dict[str, list[float]] = {v: [] for v in variants}
    batched: dict[str, list[float]] = {v: [] for v in variants}
    text: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            single[v].append(timed(lambda v=v: caption_images(caps[v], imgs[:1], settings=settings(),
                                                              batch_size=1)))
            batched[v].append(batch / timed(lambda v=v: caption_images(caps[v], imgs, settings=settings(),
                                                                       batch_size=batch,
                                                                       int8_batches=v == "int8-batched")))
            if model == "smolvlm":
                text[v].append(text_side(caps[v], imgs[0]))
        print(f"  {model} round {r + 1}/{rounds}: " + ", ".join(
            f"{v} {single[v][-1]:.2f} s" for v in variants), flush=True)
    med = statistics.median
    out: dict[str, Any] = {"variants": {}}
    for v in variants:
        row = {"s_per_image": round(med(single[v]), 3), "images_per_s_batched": round(med(batched[v]), 3),
               "rounds_s_per_image": [round(x, 3) for x in single[v]]}
        if text[v]:
            row["text_side_s"] = round(med(text[v]), 3)
        row.update(memory(model_dir, model, v, threads))
        for base, tag in ((BASELINE, ""), ("fp32", "_vs_fp32")):  # vs the toolkit before, and vs fp32 as served
            if v in (base, BASELINE) or base not in variants:
                continue
            row["speedup_one_image" + tag] = round(med(single[base]) / med(single[v]), 2)
            row["speedup_batched" + tag] = round(med(batched[v]) / med(batched[base]), 2)
            if text[v]:
                row["speedup_text_side" + tag] = round(med(text[base]) / med(text[v]), 2)
        if v != BASELINE:
            row.update(agreement(caps[BASELINE], caps[v], imgs[0]))
        out["variants"][v] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/int8_speed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smolvlm,blip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)} (default: "
                        f"{BASELINE}, fp32, int8 and bf16 where the CPU has native bf16)")
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 even where the CPU has it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    variants = [BASELINE, "fp32", "int8"] + (["bf16"] if native_bf16() and not args.no_bf16 else [])
    if args.variants:
        variants = args.variants.split(",")
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown or BASELINE not in variants:
            parser.error(f"--variants: {', '.join(unknown) or 'no ' + BASELINE}: choose from {', '.join(VARIANTS)}, "
                         f"{BASELINE} included (the baseline)")
    import machine

    result: dict[str, Any] = {
        "question": "prepacked fp32, int8 (and native bf16) vs plain fp32 captioning speed and memory on CPU",
        "machine": {"cpu": machine.cpu_name(), "threads": args.threads, "cpu_flags": machine.reported_flags()},
        "settings": {"new_tokens": NEW_TOKENS, "batch_size": args.batch_size, "rounds": args.rounds},
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="int8-speed-") as tmp:
        for model in args.models.split(","):
            result["models"][model] = run_model(model, variants, args.rounds, args.batch_size, args.threads,
                                                Path(tmp))
    from captioning.files import write_json

    write_json(args.out, result)  # creates the folder
    print(f"| model | variant | s/image (one) | images/s (batch {args.batch_size}) | text side s | peak / resident "
          "MiB | vs fp32-plain |")
    print("|---|---|---|---|---|---|---|")
    for model, res in result["models"].items():
        for v, row in res["variants"].items():
            vs = "" if v == BASELINE else (f"{row['speedup_one_image']}x one, {row['speedup_batched']}x batched"
                                           + (f", {row['speedup_text_side']}x text" if "speedup_text_side" in row
                                              else "")
                                           + (f" ({row['speedup_one_image_vs_fp32']}x one vs fp32)"
                                              if "speedup_one_image_vs_fp32" in row else "")
                                           + f"; logits cos {row['first_logits_cosine']:.4f}, "
                                             f"{row['identical_tokens']:.0%} same tokens")
            print(f"| {model} | {v} | {row['s_per_image']} | {row['images_per_s_batched']} | "
                  f"{row.get('text_side_s', '')} | {row['peak_rss_mib']} / {row['resident_mib']} | {vs} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
