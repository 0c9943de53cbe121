"""The learning experiments the suite asserts on, one function each, and their spread.

A test that asserts learning calls one of these once (seed 0); the spread runner calls each
over several seeds and torch thread counts, so the thresholds in the tests sit inside a
measured distribution instead of one machine's trajectory (training trajectories differ
between CPU models: AVX2 vs AVX-512 kernels round differently):

    .venv/bin/python -m tests.learning --seeds 0,1,2,3,4 --threads 1,2 [--only bridge,shapes_tiny]

writes bench/results/learning_spread.json and prints each statistic's min / median / max;
the numbers and the thresholds chosen from them are in BENCHMARKS.md ("Learning tests").
A seed changes everything random in an experiment: the shapes data, the model's initial
weights and the training order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "training" / "recipes"
QUIET = ["--output.progress", "false", "--output.tensorboard", "false"]


def shapes_data(folder: Path, seed: int, n_train: int, n_val: int, n_test: int = 0) -> Path:
    from synthetic.shapes import generate

    return generate(folder, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test)


def _train(argv: list[str], scorer) -> Path:
    from training.flags import load_config
    from training.train import train

    return train(load_config(argv), scorer=scorer, log=lambda *_: None)


def _history(run: Path) -> dict[int, dict]:
    return {h["step"]: h for h in json.loads((run / "metrics.json").read_text())["history"]}


def bridge(work: Path, *, seed: int = 0, threads: int = 1, scorer=None) -> dict:
    """shapes-bridge-tiny, both stages from the checked-in recipes, train 1000 / val 50 images:
    the tiny LM learns the shapes captions text-only (shortened to 120 steps), then the bridge
    alone learns to read the frozen random backbone into it (the recipe as it is: 600 steps
    at lr 1e-2, validation before the first step and every 200). Returns val CIDEr and loss
    of the zero-gated bridge (the bare LM's one best guess for every image) and of the
    trained bridge at its last validation, and both runs' folders ("lm", "run")."""
    data = shapes_data(work / "data", seed, 1000, 50)
    common = ["--data.source", str(data), "--optim.seed", str(seed), "--optim.num_threads", str(threads), *QUIET]
    lm = _train(["--config", str(RECIPES / "bridge-shapes-lm-tiny.yaml"), "--output-dir", str(work / "lm"),
                 "--model.factory.seed", str(seed), "--optim.max_steps", "120", "--eval.enabled", "false",
                 *common], scorer)
    run = _train(["--config", str(RECIPES / "shapes-bridge-tiny.yaml"), "--model.trust_remote_code", "true",
                  "--model.name_or_path", str(lm),
                  "--output-dir", str(work / "bridge"), *common], scorer)
    return {**before_after(run), "lm": lm, "run": run}


def shapes_tiny_argv(data: Path, out: Path, *, seed: int = 0, threads: int = 1, steps: int = 100) -> list[str]:
    """training.train flags for a short shapes-tiny run (validation at step 0 and at the end)."""
    return ["--config", str(RECIPES / "shapes-tiny.yaml"), "--data.source", str(data), "--output-dir", str(out),
            "--model.factory.seed", str(seed), "--optim.seed", str(seed), "--optim.num_threads", str(threads),
            "--optim.max_steps", str(steps), "--eval.every_steps", str(steps), "--eval.loss_samples", "50",
            "--eval.generate_samples", "100", "--data.num_workers", "0", *QUIET]


def before_after(run: Path) -> dict:
    """Val CIDEr and loss before the first step and at the last validation of a run."""
    hist = _history(run)
    last = max(hist)
    return {"cider_before": hist[0]["CIDEr"], "cider_after": hist[last]["CIDEr"],
            "loss_before": hist[0]["loss"], "loss_after": hist[last]["loss"]}


def shapes_tiny(work: Path, *, seed: int = 0, threads: int = 1, scorer=None, steps: int = 100) -> dict:
    """``steps`` (100) steps of the shapes-tiny recipe from a random tiny SmolVLM (idefics3),
    train 400 / val 100 images: val CIDEr and loss before the first step and after the last."""
    data = shapes_data(work / "data", seed, 400, 100)
    run = _train(shapes_tiny_argv(data, work / "run", seed=seed, threads=threads, steps=steps), scorer)
    return before_after(run)


def shapes_demo(work: Path, *, seed: int = 0, threads: int = 1, scorer=None, steps: int = 400) -> dict:
    """``steps`` (400) steps of the shapes-demo recipe from a random demo-size SmolVLM (idefics3),
    train 4000 images, no validation; then eval/run.py generate on 100 test images of another
    seed (``seed + 1000``): the scene accuracy numbers and CIDEr of the trained model."""
    from eval.generate import GenerateConfig, run_generate

    data = shapes_data(work / "data", seed, 4000, 0)
    unseen = shapes_data(work / "unseen", seed + 1000, 0, 0, n_test=100)
    run = _train(["--config", str(RECIPES / "shapes-demo.yaml"), "--data.source", str(data), "--output-dir",
                  str(work / "run"), "--model.factory.seed", str(seed), "--optim.seed", str(seed),
                  "--optim.num_threads", str(threads), "--optim.max_steps", str(steps), "--eval.enabled", "false",
                  "--data.num_workers", "0", *QUIET], scorer)
    cfg = GenerateConfig(model=str(run), dataset=str(unseen), split="test", out=str(work / "eval"), batch_size=50,
                         metrics=["CIDEr"], report=False, progress=False)
    record = run_generate(cfg, scorer=scorer, log=lambda *_: None).record
    return {"CIDEr": record["metrics"]["CIDEr"], **{k: v for k, v in record["scene_accuracy"].items()
                                                     if isinstance(v, float)}}


def open_gates(model, seed: int = 1) -> None:
    """Random non-zero gates and projections: a 'trained-looking' bridge that reads the image."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.bridge.named_parameters():
            if name.endswith("_gate"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("weight") and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


FEW_STEP_CAPTIONS = ["a red circle", "two shapes: a blue square and a green star", "a yellow triangle"]


def bridge_steps(model, family, processor, images, prompt, *, steps: int = 3, lr: float = 1e-2) -> list[float]:
    """The losses of ``steps`` AdamW steps of the trainable (bridge) parameters on one fixed
    batch: three images with the captions above."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = family.collate(processor, [family.encode_example(processor, im, c, prompt)
                                       for im, c in zip(images, FEW_STEP_CAPTIONS)])
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def bridge_few_steps(work: Path, *, seed: int = 0, threads: int = 1, scorer=None) -> dict:
    """test_bridge's what-trains check: a tiny bridge with opened gates, 3 steps on one batch."""
    import torch

    from captioning.families import get_family
    from captioning.images import load_image
    from synthetic.factory import build_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model, processor = build_model("bridge", "tiny", seed=seed)
        open_gates(model, seed=seed + 1)
        model.train()
        family = get_family("bridge")
        shapes = shapes_data(work / "data", seed, 0, 0, n_test=len(FEW_STEP_CAPTIONS)) / "images" / "test"
        images = [load_image(f) for f in sorted(shapes.glob("*.png"))]
        losses = bridge_steps(model, family, processor, images, family.default_prompt)
    finally:
        torch.set_num_threads(before)
    return {"loss_first": losses[0], "loss_last": losses[-1]}


EXPERIMENTS: dict[str, Callable[..., dict]] = {"bridge": bridge, "shapes_tiny": shapes_tiny,
                                                "bridge_few_steps": bridge_few_steps, "shapes_demo": shapes_demo}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated: " + ", ".join(EXPERIMENTS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "learning_spread.json"))
    args = ap.parse_args(argv)
    import torch

    from eval.scoring import Scorer

    rows = []
    with Scorer() as scorer, tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            for seed in map(int, args.seeds.split(",")):
                for threads in map(int, args.threads.split(",")):
                    start = time.perf_counter()
                    got = EXPERIMENTS[name](Path(tmp) / f"{name}-{seed}-{threads}", seed=seed, threads=threads,
                                            scorer=scorer)
                    row = {"experiment": name, "seed": seed, "threads": threads,
                           "seconds": round(time.perf_counter() - start, 1),
                           **{k: v for k, v in got.items() if isinstance(v, (int, float))}}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = {}
    for name in {r["experiment"] for r in rows}:
        mine = [r for r in rows if r["experiment"] == name]
        summary[name] = {k: {"min": min(r[k] for r in mine), "median": statistics.median(r[k] for r in mine),
                             "max": max(r[k] for r in mine)}
                         for k in mine[0] if k not in ("experiment", "seed", "threads")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary, "torch": torch.__version__,
                               "cpu_flags": _cpu_flags()}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def _cpu_flags() -> list[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"})


if __name__ == "__main__":
    sys.exit(main())
