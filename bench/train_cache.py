"""How much faster does LoRA training run with the frozen-tower feature cache?

    python bench/train_cache.py [--rounds 3] [--steps 2] [--out bench/results/train_cache.json]
    python bench/train_cache.py --quick        # smoke run on the tiny model

The model is the real-size random SmolVLM-256M architecture (synthetic.factory size
"real"; speed does not depend on weight values), LoRA r 8 on the idefics3 family's default
targets (language-model attention + MLP), batch 4, one 512 px crop per image (image
splitting off: 64 image tokens). Both variants run the training code path: the training
Dataset and Collator, and CaptionTrainer.training_step (forward, loss, backward) plus an
AdamW step. "cache" feeds precomputed vision + connector outputs (``mm_encoder_outputs``),
"pixels" runs the frozen tower every step. Variants alternate step by step within one run
because absolute times drift ~2x on shared machines; the loss of one batch is computed both
ways first and must agree. Filling the cache (one vision forward per image) is timed apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="real", choices=["real", "tiny"])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (each: --steps per variant)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, all cores). On a machine shared with other jobs "
                         "use 1: a second thread spin-waits at every one of the many small LoRA ops (measured "
                         "under load: the cached step took 32 s with 2 threads vs 7.3 s with 1)")
    ap.add_argument("--quick", action="store_true", help="tiny model, one round: checks the script runs")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_cache.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.rounds, args.steps = "tiny", 1, 2
        if args.out == ap.get_default("out"):
            args.out = str(REPO / "bench" / "results" / "train_cache.quick.json")

    import torch
    from transformers import TrainingArguments

    from captioning.data import load_captions
    from captioning.families import get_family
    from captioning.files import write_json
    from synthetic.factory import build_model
    from synthetic.shapes import generate
    from training import data as tdata
    from training.engine import CaptionTrainer, caption_loss
    from training.flags import build_config
    from training.modeling import parameter_report, setup_trainable

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    bs = args.batch_size
    # Step time does not depend on which images a batch holds: cycle over a small pool so
    # filling the cache (a full vision forward per image) does not dominate the run.
    n_batches = 2
    n_images = bs * n_batches
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-cache-"))
    shapes = generate(tmp / "shapes", n_train=n_images, n_val=1, n_test=1)

    started = time.time()
    model, processor = build_model("idefics3", args.size, seed=0)
    family = get_family("idefics3")
    edge = model.config.vision_config.image_size
    family.configure_processor(processor, image_longest_edge=edge, image_splitting=False)
    cfg = build_config({"model": {"name_or_path": "bench"}, "data": {"source": str(shapes), "feature_cache": True},
                        "lora": {"r": 8, "alpha": 16, "dropout": 0.0}})
    model = setup_trainable(model, family, cfg)
    model.train()
    counts = parameter_report(model, family)
    print(f"model ready in {time.time() - started:.0f}s: {counts['total'] / 1e6:.1f}M parameters, "
          f"{counts['trainable'] / 1e6:.2f}M trainable (LoRA r 8)", flush=True)

    ds = load_captions(shapes, "train")
    prompt = family.default_prompt
    t0 = time.time()
    cache = tdata.compute_feature_cache(model, family, processor, ds, prompt, batch_size=bs)
    feats = cache.features
    fill_s = time.time() - t0
    print(f"cache filled: {len(feats)} images in {fill_s:.1f}s ({fill_s / len(feats):.2f} s/image, "
          f"{feats[0].numel() * 4 / 1024:.0f} KiB/image)", flush=True)

    collate = tdata.Collator(family, processor)
    pixels_ds = tdata.CaptionTrainDataset(ds, family, processor, prompt, references="sample")
    cache_ds = tdata.CaptionTrainDataset(ds, family, processor, prompt, references="sample", cache=cache)

    def batch(dataset, i):
        i %= n_batches
        return collate([dataset[j] for j in range(i * bs, (i + 1) * bs)])

    targs = TrainingArguments(output_dir=str(tmp / "out"), per_device_train_batch_size=bs, learning_rate=1e-4,
                              report_to="none", use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
                              label_names=["labels"], disable_tqdm=True)
    trainer = CaptionTrainer(model=model, args=targs, data_collator=collate, compute_loss_func=caption_loss(),
                             family=family)
    trainer.create_optimizer_and_scheduler(num_training_steps=2 * (1 + args.rounds * args.steps))
    opt = trainer.optimizer

    # the same batch both ways: the cache must not change the loss
    with torch.no_grad():
        b_pix, b_cache = batch(pixels_ds, 0), batch(cache_ds, 0)
        n_items = (b_pix["labels"][:, 1:] != -100).sum()
        l_pix = trainer.compute_loss(model, b_pix, num_items_in_batch=n_items).item()
        l_cache = trainer.compute_loss(model, b_cache, num_items_in_batch=n_items).item()
    print(f"loss on one batch: pixels {l_pix:.6f}, cache {l_cache:.6f}", flush=True)
    if abs(l_pix - l_cache) > 1e-4 * max(1.0, abs(l_pix)):
        print("error: the feature cache changes the loss", file=sys.stderr)
        return 1

    def step(dataset, i) -> float:
        t = time.perf_counter()
        b = batch(dataset, i)  # data preparation (processor) counts: it is part of a training step
        n = (b["labels"][:, 1:] != -100).sum()
        trainer.training_step(model, b, num_items_in_batch=n)
        if trainer.args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"pixels": [], "cache": []}
    step(pixels_ds, 0)  # warm-up, not timed
    step(cache_ds, 0)
    k = 1
    for r in range(args.rounds):
        order = ["pixels", "cache"] if r % 2 == 0 else ["cache", "pixels"]
        for _ in range(args.steps):
            for name in order:
                times[name].append(step(pixels_ds if name == "pixels" else cache_ds, k))
            k += 1
        print(f"round {r + 1}/{args.rounds}: pixels {statistics.median(times['pixels']):.2f} s/step, "
              f"cache {statistics.median(times['cache']):.2f} s/step", flush=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    sps = {n: bs / med[n] for n in med}
    speedup = sps["cache"] / sps["pixels"]
    result = {
        "question": "training samples/s with vs without the frozen-tower feature cache",
        "model": f"random SmolVLM-256M architecture (captioning.factory idefics3 size={args.size})",
        "parameters": counts,
        "lora": {"r": 8, "alpha": 16, "targets": cfg.lora.target_modules},
        "batch_size": bs, "image": f"one {edge} px crop (image_splitting off)",
        "image_tokens": int(feats[0].shape[0]),
        "steps_timed_per_variant": len(times["pixels"]),
        "seconds_per_step": {n: [round(x, 3) for x in t] for n, t in times.items()},
        "median_seconds_per_step": {n: round(v, 3) for n, v in med.items()},
        "samples_per_second": {n: round(v, 3) for n, v in sps.items()},
        "speedup": round(speedup, 2),
        "target_speedup": 3.5,
        "loss_pixels": l_pix, "loss_cache": l_cache,
        "cache_fill_seconds_per_image": round(fill_s / len(feats), 3),
        "cache_bytes_per_image": int(feats[0].numel() * feats[0].element_size()),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1m_start_end": [round(load_before, 2) if load_before is not None else None,
                                                  round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None]},
        "seconds": round(time.time() - started, 1),
    }
    write_json(args.out, result)
    print(f"pixels {sps['pixels']:.3f} samples/s, cache {sps['cache']:.3f} samples/s: {speedup:.2f}x "
          f"(target >= 3.5x); wrote {args.out}")
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:  # run as a script from a checkout: import the toolkit beside it
        sys.path.insert(0, str(REPO))
    sys.exit(main())
