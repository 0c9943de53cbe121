"""How much faster is our batched captioning than one image at a time, as the seeds do it?

    python bench/generation_speed.py [--models smolvlm,blip] [--images N] [--batch-size B] [--quick]

Models: random weights at the real published architectures (synthetic.factory, size
"real": SmolVLM-256M-Instruct = idefics3 with ONE 512 px crop, image splitting off, 64
image tokens; BLIP base), fp32 on CPU, greedy with a fixed output length
(min_new_tokens == max_new_tokens), so speed does not depend on the random weights.
Images: deterministic synthetic 640x480 photos, so the processors do real resizing.

Variants, each in its own worker process (so each has its own peak RSS):
  one_at_a_time  the seeds' way: AutoModelForImageTextToText/AutoProcessor.from_pretrained
                 with default settings, then per image one processor call, one
                 model.generate and one batch_decode.
  batched        captioning.generation.caption_images(load_captioner(..., prepack=True), images,
                 batch_size=B) - the code every captioning stage of the toolkit uses.
The variants run in alternating rounds of two batches (2B images) on the same images
(absolute times drift ~2x on shared machines; ratios measured side by side do not), with
the fp32 GEMM peak (bench/gemm_peak.py: plain
torch.matmul, large squares, same thread count) measured between rounds. FLOPs per
caption are counted from the config (bench/caption_flops.py documents the formula), so
"fraction of peak" = FLOPs per caption x images/s / GEMM peak.
Peak RSS: the high-water mark while captioning (reset after loading and warm-up through
/proc/self/clear_refs), and the lifetime high-water mark including loading.
The breakdown: processor, vision tower, and text = the rest of the wall time.

Writes bench/results/generation_speed.json and prints a markdown table. --quick is a
small smoke run; --size tiny runs the same code on tiny models in seconds (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is first on sys.path (caption_flops, gemm_peak); captioning comes
# from the editable install.
REPO = Path(__file__).resolve().parents[1]

MODELS = {"smolvlm": "idefics3", "blip": "blip"}
#: best measured batch size per model on a 2-core CPU (see BENCHMARKS.md / the report)
DEFAULT_BATCH = {"smolvlm": 16, "blip": 16}
#: the issue's targets: batched / one-at-a-time images/s, and fraction of the GEMM peak
TARGETS = {"smolvlm": {"speedup": 1.8, "fraction_of_peak": 0.8}, "blip": {"speedup": 1.6}}
VARIANTS = ("one_at_a_time", "batched")
PROMPT = "Give a concise caption."
DEFAULT_OUT = REPO / "bench" / "results" / "generation_speed.json"


# --------------------------------------------------------------------- inputs
def synthetic_photo(index: int, size: tuple[int, int] = (640, 480)):
    """A deterministic photo-like RGB image: smooth colour gradients, a few blobs and
    sensor noise (so resizing and normalising do the work real photos need)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1000 + index)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 90 * np.sin(a * x / 97 + b * y / 61 + phase * 3)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


_PEAK_BEFORE_RESET_KB = 0


def _peak_kb() -> int:
    # VmHWM: the kernel's RSS high-water mark (ru_maxrss is the same number on Linux,
    # and also drops when the mark is reset)
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0), remembering the
    old mark for the lifetime figure."""
    global _PEAK_BEFORE_RESET_KB
    _PEAK_BEFORE_RESET_KB = max(_PEAK_BEFORE_RESET_KB, _peak_kb())
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> dict[str, float | None]:
    """Current RSS, high-water mark since the last reset (captioning only) and over the
    whole process life (loading included), in MB."""
    cur, hwm = _status_kb("VmRSS"), _peak_kb()
    return {"rss_mb": cur and round(cur / 1024, 1), "peak_rss_mb": round(hwm / 1024, 1),
            "peak_rss_with_load_mb": round(max(hwm, _PEAK_BEFORE_RESET_KB) / 1024, 1)}


# -------------------------------------------------------------------- variants
class Variant:
    """One way of captioning, loaded once, then asked to caption slices of the image set."""

    def __init__(self, spec: dict[str, Any]):
        import torch

        self.spec = spec
        torch.set_num_threads(spec["threads"])
        self.images = [synthetic_photo(i) for i in range(spec["n_images"])]
        self.warm_images = [synthetic_photo(-1 - i) for i in range(spec["warmup_images"])]
        t = time.perf_counter()
        self.load()
        self.load_seconds = time.perf_counter() - t
        self.timers = {"processor": 0.0, "vision": 0.0}
        self._instrument()

    # -- the parts that differ
    def load(self) -> None:
        raise NotImplementedError

    def caption(self, images) -> list[str]:
        raise NotImplementedError

    def _vision_module(self):
        from captioning.families import get_family

        fam = get_family(self.spec["family"])
        names = fam.module_names(self.model, fam.vision_pattern)
        return dict(self.model.named_modules())[min(names, key=len)]

    def _instrument(self) -> None:
        """Time the vision tower with hooks (one pair of calls per forward: negligible)."""
        vision = self._vision_module()

        def begin(*_):
            self._vision_start = time.perf_counter()

        def done(*_):
            self._add("vision", time.perf_counter() - self._vision_start)

        vision.register_forward_pre_hook(begin)
        vision.register_forward_hook(done)

    def _add(self, part: str, seconds: float) -> None:
        self.timers[part] += seconds

    # -- the protocol
    def run(self, start: int, stop: int, warmup: bool = False) -> dict[str, Any]:
        import torch

        images = self.warm_images if warmup else self.images[start:stop]
        self.timers = {"processor": 0.0, "vision": 0.0}
        self._position = {id(im): k for k, im in enumerate(images)}
        self.tokens: list[list[int] | None] = [None] * len(images)
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            captions = self.caption(images)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        if warmup:
            reset_peak_rss()  # the captioning peak, not the loading peak
        return {"seconds": seconds, "cpu_seconds": cpu, "captions": captions, "tokens": self.tokens,
                "n": len(images), "breakdown_s": dict(self.timers), "load_average": os.getloadavg()[0]}

    def _keep_tokens(self, ids, images) -> None:
        """The generated token ids (the last ``new_tokens`` of each output row: the output
        length is forced). Captions are compared on these: a random-weight model mostly
        emits ids its small offline tokenizer decodes to nothing, so equal decoded
        captions would prove little."""
        for row, image in zip(ids[:, -self.spec["new_tokens"]:].tolist(), images, strict=True):
            self.tokens[self._position[id(image)]] = row

    def stats(self) -> dict[str, Any]:
        return {"load_seconds": round(self.load_seconds, 2), **rss_mb()}


class OneAtATime(Variant):
    """What the seed scripts do: default loading, one processor call and one generate per image."""

    def load(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        d = self.spec["model_dir"]
        self.model = AutoModelForImageTextToText.from_pretrained(d)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(d)
        self.is_blip = self.spec["family"] == "blip"
        if not self.is_blip:
            self.processor.image_processor.do_image_splitting = False  # ONE 512 crop
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
            self.text = self.processor.apply_chat_template(conv, add_generation_prompt=True)

    def caption(self, images):
        n = self.spec["new_tokens"]
        out = []
        for image in images:
            t = time.perf_counter()
            if self.is_blip:
                inputs = self.processor(images=image, return_tensors="pt")
            else:
                inputs = self.processor(text=self.text, images=[image], return_tensors="pt")
            self._add("processor", time.perf_counter() - t)
            ids = self.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            self._keep_tokens(ids, [image])
            if not self.is_blip:
                ids = ids[:, inputs["input_ids"].shape[1]:]
            text = self.processor.batch_decode(ids, skip_special_tokens=True)[0]
            out.append(" ".join(text.split()))
        return out

    def prompt_tokens(self) -> int:
        if self.is_blip:
            return 1  # generate feeds bos only
        inputs = self.processor(text=self.text, images=[self.images[0]], return_tensors="pt")
        return int(inputs["input_ids"].shape[1])


class Batched(Variant):
    """The toolkit's way: load_captioner + caption_images with a batch size."""

    def load(self):
        from captioning.loading import load_captioner

        smol = self.spec["family"] == "idefics3"  # BLIP captions unconditionally, as the seeds do
        self.cap = load_captioner(self.spec["model_dir"], image_splitting=False if smol else None,
                                  prompt=PROMPT if smol else None, device="cpu", prepack=True)
        self.model = self.cap.model
        self.applied = {}
        if self.spec["variant"] == "batched_proposed":
            import proposed_speedups

            self.applied = proposed_speedups.apply(self.cap)
        fam = self.cap.family
        original = fam.generation_inputs

        def timed(proc, images, *args, **kwargs):  # instance attribute: only this worker's family object
            self._batch = images  # for keep() below
            t = time.perf_counter()
            try:
                return original(proc, images, *args, **kwargs)
            finally:
                self._add("processor", time.perf_counter() - t)

        fam.generation_inputs = timed
        generate = fam.generate

        def keep(*args, **kwargs):
            out = generate(*args, **kwargs)
            self._keep_tokens(out, self._batch)
            return out

        fam.generate = keep

    def caption(self, images):
        from captioning.generation import GenerationSettings, caption_images

        n = self.spec["new_tokens"]
        settings = GenerationSettings(max_new_tokens=n, min_new_tokens=n)
        return [c[0] for c in caption_images(self.cap, images, settings=settings, batch_size=self.spec["batch_size"])]

    def stats(self):
        return {**super().stats(), "proposed_applied": self.applied}


VARIANT_CLASSES = {"one_at_a_time": OneAtATime, "batched": Batched, "batched_proposed": Batched}


def _worker(spec_json: str) -> int:
    """Worker process: JSON commands on stdin, JSON answers on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (library chatter) goes to stderr
    spec = json.loads(spec_json)
    variant = VARIANT_CLASSES[spec["variant"]](spec)
    extra = {"prompt_tokens": variant.prompt_tokens()} if isinstance(variant, OneAtATime) else {}
    proto.write(json.dumps({"ready": True, **variant.stats(), **extra}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            answer = variant.run(cmd.get("start", 0), cmd.get("stop", 0), warmup=cmd.get("warmup", False))
        elif cmd["cmd"] == "stats":
            answer = variant.stats()
        else:
            break
        proto.write(json.dumps(answer) + "\n")
    return 0


class Worker:
    """A variant in a subprocess, spoken to with one JSON line per command."""

    def __init__(self, spec: dict[str, Any], log_dir: Path):
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONWARNINGS="ignore")
        self.log_path = log_dir / f"{spec['model']}-{spec['variant']}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=str(REPO))
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"worker {self.log_path.stem} died:\n{tail}")
        return json.loads(line)

    def ask(self, **cmd) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------- the bench
def bench_model(name: str, *, model_dir: Path, n_images: int, batch_size: int, new_tokens: int, threads: int,
                gemm_sizes, log_dir: Path, variants=VARIANTS, log=print) -> dict[str, Any]:
    """Run the variants on one model in alternating rounds; return its JSON section."""
    from caption_flops import caption_flops
    from gemm_peak import gemm_peak
    from transformers import AutoConfig

    family = MODELS[name]
    per_round = 2 * batch_size
    rounds = max(1, n_images // per_round)
    n_images = rounds * per_round
    base = {"model": name, "family": family, "model_dir": str(model_dir), "threads": threads,
            "n_images": n_images, "batch_size": batch_size, "new_tokens": new_tokens,
            "warmup_images": min(batch_size, 2)}
    variants = list(variants)
    workers: dict[str, Worker] = {}
    try:
        for v in variants:
            log(f"[{name}] loading {v} ...")
            workers[v] = Worker({**base, "variant": v}, log_dir)
        for w in workers.values():
            w.ask(cmd="run", warmup=True)
        peaks = [gemm_peak(gemm_sizes, threads=threads)]
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(rounds):
            # rotate the order every round so no variant always runs first (drift cancels)
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                res = workers[v].ask(cmd="run", start=r * per_round, stop=(r + 1) * per_round)
                results[v].append(res)
                log(f"[{name}] round {r + 1}/{rounds} {v}: {res['n'] / res['seconds']:.3f} images/s "
                    f"(load {res['load_average']:.1f})")
            peaks.append(gemm_peak(gemm_sizes, threads=threads))
        stats = {v: w.ask(cmd="stats") for v, w in workers.items()}
        prompt_tokens = workers["one_at_a_time"].hello["prompt_tokens"]
    finally:
        for w in workers.values():
            w.close()

    config = AutoConfig.from_pretrained(model_dir)
    flops = caption_flops(config, family, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    peak = statistics.median(p["gflops"] for p in peaks)
    peak_cpu = statistics.median(p["gflops_cpu_time"] for p in peaks)
    section: dict[str, Any] = {
        "family": family, "n_images": n_images, "batch_size": batch_size, "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens, "rounds": rounds,
        "gflop_per_caption": {k: round(v, 3) for k, v in flops.items()},
        "gemm_peak_gflops": round(peak, 2), "gemm_peak_samples": [p["gflops"] for p in peaks],
        "gemm_peak_gflops_cpu_time": round(peak_cpu, 2),
        "gemm_peak_samples_cpu_time": [p["gflops_cpu_time"] for p in peaks],
        "variants": {},
    }
    baseline = results["one_at_a_time"]
    for v in variants:
        runs = results[v]
        seconds = sum(x["seconds"] for x in runs)
        ips = n_images / seconds
        achieved = flops["total"] * ips
        cpu = sum(x["cpu_seconds"] for x in runs)
        ips_cpu = n_images / (cpu / threads)  # as if the scheduler gave us `threads` whole cores
        entry = {
            "images_per_s": round(ips, 4), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "images_per_s_cpu_time": round(ips_cpu, 4),
            "fraction_of_peak_cpu_time": round(flops["total"] * ips_cpu / peak_cpu, 4),
            "round_images_per_s": [round(x["n"] / x["seconds"], 4) for x in runs],
            "achieved_gflops": round(achieved, 2), "fraction_of_peak": round(achieved / peak, 4),
            "breakdown_s": {k: round(sum(x["breakdown_s"][k] for x in runs), 2) for k in runs[0]["breakdown_s"]},
            "batch_size": 1 if v == "one_at_a_time" else batch_size,
            **{k: stats[v][k] for k in ("peak_rss_mb", "peak_rss_with_load_mb", "load_seconds")},
        }
        if "proposed_applied" in stats[v] and v != "batched":
            entry["proposed_applied"] = stats[v]["proposed_applied"]
        entry["breakdown_s"]["text"] = round(seconds - entry["breakdown_s"]["processor"]
                                             - entry["breakdown_s"]["vision"], 2)
        if v != "one_at_a_time":
            entry["speedup"] = round(ips / (n_images / sum(x["seconds"] for x in baseline)), 3)
            entry["speedup_cpu_time"] = round(sum(x["cpu_seconds"] for x in baseline) / cpu, 3)
            # per-round ratios: each pair ran back to back, so drift mostly cancels within a pair
            entry["round_speedups"] = [round(a["seconds"] / b["seconds"], 3) for a, b in zip(baseline, runs)]
            caps = [(c1, c2) for a, b in zip(baseline, runs) for c1, c2 in zip(a["captions"], b["captions"])]
            entry["captions_equal_to_one_at_a_time"] = f"{sum(c1 == c2 for c1, c2 in caps)}/{len(caps)}"
            toks = [(t1, t2) for a, b in zip(baseline, runs) for t1, t2 in zip(a["tokens"], b["tokens"])]
            entry["token_ids_equal_to_one_at_a_time"] = f"{sum(t1 == t2 for t1, t2 in toks)}/{len(toks)}"
            # where they part: random weights give near-flat logits, so a last-bit difference
            # (batching changes how the products are blocked) can flip a near-tie; count the positions
            # before the first flip
            agree = sum(next((i for i, (x, y) in enumerate(zip(t1, t2)) if x != y), len(t1)) for t1, t2 in toks)
            entry["tokens_before_first_difference"] = f"{agree}/{sum(len(t1) for t1, _ in toks)}"
        section["variants"][v] = entry
    section["speedup"] = section["variants"]["batched"]["speedup"]
    section["load_average_per_round"] = [round(x["load_average"], 2) for x in results["batched"]]
    target = TARGETS.get(name, {})
    bat = section["variants"]["batched"]
    section["targets"] = {**target, "speedup_met": bat["speedup"] >= target.get("speedup", 0)}
    if "fraction_of_peak" in target:
        section["targets"]["fraction_of_peak_met"] = bat["fraction_of_peak"] >= target["fraction_of_peak"]
    section["sample_captions"] = {v: results[v][0]["captions"][:2] for v in variants}
    return section


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table (wall clock first, then the CPU-time view)."""
    rows = ["| model | variant | batch | images/s | speedup | GFLOP/caption | GFLOP/s | % of GEMM peak | "
            "speedup (CPU time) | % of peak (CPU time) | peak RSS MB (with load) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, sec in report["models"].items():
        for v, r in sec["variants"].items():
            rows.append(f"| {name} | {v} | {r['batch_size']} | {r['images_per_s']:.3f} | "
                        f"{r.get('speedup', 1.0):.2f}x | {sec['gflop_per_caption']['total']:.1f} | "
                        f"{r['achieved_gflops']:.1f} | {100 * r['fraction_of_peak']:.1f}% | "
                        f"{r.get('speedup_cpu_time', 1.0):.2f}x | {100 * r['fraction_of_peak_cpu_time']:.1f}% | "
                        f"{r['peak_rss_mb']:.0f} ({r['peak_rss_with_load_mb']:.0f}) |")
    peaks = "; ".join(f"{n} {s['gemm_peak_gflops']:.1f} wall, {s['gemm_peak_gflops_cpu_time']:.1f} per CPU-s"
                      for n, s in report["models"].items())
    rows.append("")
    rows.append(f"fp32 GEMM peak (GFLOP/s, {report['settings']['threads']} thread(s), median of the samples "
                f"taken between rounds): {peaks}. Load average {report['load_average']['start']} at start, "
                f"{report['load_average']['end']} at end. CPU-time columns divide by this process's CPU "
                f"seconds per thread, so they do not count time the scheduler gave to other processes.")
    return "\n".join(rows)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def run(models: list[str], *, n_images: int, batch_size: int | None, new_tokens: int, threads: int, size: str,
        gemm_sizes, out: Path | None, models_dir: Path | None = None, proposed: bool = False,
        log=print) -> dict[str, Any]:
    """The whole benchmark; returns the report (and writes it to ``out``)."""
    import machine

    from synthetic.factory import build_random_model

    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "generation_speed", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "versions": _versions(), "machine": {"cpu": machine.cpu_name(), "cores": os.cpu_count()},
        "settings": {"size": size, "threads": threads, "new_tokens": new_tokens, "dtype": "float32",
                     "device": "cpu", "image_size": [640, 480], "prompt": PROMPT, "gemm_sizes": list(gemm_sizes)},
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "models": {},
    }
    busy = os.getloadavg()[0] > (os.cpu_count() or 1) - threads + 0.5
    report["settings"]["busy_at_start"] = busy
    if busy:
        # With more runnable threads than cores, every parallel region of a multi-threaded
        # op waits for a descheduled thread, so small products slow down many times over.
        log(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall-clock numbers "
            f"{'with ' + str(threads) + ' threads ' if threads > 1 else ''}will be distorted; prefer a quiet "
            "machine, or --threads 1 and the CPU-time columns")
    tmp = Path(tempfile.mkdtemp(prefix="genbench-"))
    try:
        for name in models:
            b = batch_size or (DEFAULT_BATCH[name] if size == "real" else 2)
            mdir = (models_dir / f"{name}-{size}") if models_dir else tmp / name
            if not (mdir / "config.json").is_file():
                log(f"[{name}] building random {size} {MODELS[name]} model ...")
                build_random_model(MODELS[name], mdir, size)
            report["models"][name] = bench_model(name, model_dir=mdir, n_images=n_images, batch_size=b,
                                                 new_tokens=new_tokens, threads=threads, gemm_sizes=gemm_sizes,
                                                 log_dir=tmp, log=log,
                                                 variants=VARIANTS + (("batched_proposed",) if proposed else ()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.time() - started, 1)
    if out is not None:
        from captioning.files import write_json

        write_json(out, report)  # atomic; creates the folder
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    parser = argparse.ArgumentParser(prog="python bench/generation_speed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smolvlm,blip", help="comma-separated: smolvlm, blip")
    parser.add_argument("--images", type=int, default=64,
                        help="images per variant (rounded down to whole rounds of two batches)")
    parser.add_argument("--batch-size", type=int, help=f"batch size of the batched variant (default {DEFAULT_BATCH})")
    parser.add_argument("--new-tokens", type=int, default=20, help="fixed caption length in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every variant and the GEMM peak")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 images, batch 2, a 2048 GEMM")
    parser.add_argument("--size", choices=("real", "tiny"), default="real", help="model size (tiny: tests)")
    parser.add_argument("--proposed", action="store_true",
                        help="add a variant with the family changes proposed in bench/proposed_speedups.py")
    parser.add_argument("--models-dir", type=Path, help="keep/reuse the built random models here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        print(f"error: --models {args.models!r}: choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if args.images < 1 or args.new_tokens < 1 or args.threads < 1 or (args.batch_size or 1) < 1:
        print("error: --images, --batch-size, --new-tokens and --threads must be at least 1", file=sys.stderr)
        return 2
    n_images, batch, gemm_sizes = args.images, args.batch_size, (2048, 3072)
    if args.quick:
        n_images, batch, gemm_sizes = min(n_images, 4), batch or 2, (2048,)
    if args.size == "tiny":
        gemm_sizes = (256,)
    # a killed run still closes its workers and removes its temporary models
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run(models, n_images=n_images, batch_size=batch, new_tokens=args.new_tokens, threads=args.threads,
                 size=args.size, gemm_sizes=gemm_sizes, out=args.out, models_dir=args.models_dir,
                 proposed=args.proposed,
                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(markdown_table(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
