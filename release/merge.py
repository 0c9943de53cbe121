"""Merge a LoRA adapter into its base model, and prove the merge changed nothing.

    release merge --adapter outputs/style --out releases/style-merged [--base ID_OR_DIR] [--dtype bf16]

The base is read from the adapter's adapter_config.json (then train_config.yaml)
unless ``--base`` is given, and is always loaded at full precision: an adapter
trained on a 4-bit base (QLoRA) is merged into the unquantised weights, never
into the quantised ones. The merged model is saved (safetensors, config,
processor, tokenizer, chat template, generation_config, train_config.yaml) in
files both transformers majors read (release.compat), then reloaded from disk
and compared with base + adapter on probe images: the maximum |logit
difference| over prompt + caption, and the greedy captions, which must be
identical. The numbers are printed and stored in ``merge_check.json``; a
failing check writes nothing and stops the release.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.files import check_not_input, output_lock, partial_folder, replace_folder
from captioning.fingerprints import model_fingerprint, short, weights_fingerprint
from captioning.generation import MAX_NEW_TOKENS
from captioning.options import option
from captioning.records import (
    KIND_MERGE_CHECK,
    MERGE_CHECK,
    TRAIN_CONFIG,
    TrainConfigRecord,
    TrainingRecord,
    adapter_base,
    write_record,
)
from captioning.vocabulary import DTYPE_CHOICES

#: more probe images only repeat the check (each is a forward pass with captioning)
MAX_PROBES = 256
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
#: max |logit difference| the merged model may show against base + adapter, by
#: storage dtype: fp32 storage only reorders float sums; half precision rounds
#: every merged weight (relative error ~2^-8 in bf16), which moves logits by
#: about 1e-2 on small models.
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 2.5e-1}


@dataclass
class MergeOptions:
    """What ``release merge`` does; its flags are these fields (captioning.options.click_options)."""

    adapter: Path = option(help="LoRA adapter folder (training output)")
    out: Path = option(help="folder for the merged model")
    base: str | None = option(None, help="base model id or folder (default: from adapter_config.json / "
                                         "train_config.yaml)")
    dtype: str = option("auto", help="storage dtype of the merged weights (auto: the base checkpoint's)",
                        choices=DTYPE_CHOICES)
    force: bool = option(False, help="replace a non-empty --out folder")
    probes: int = option(4, help="probe images (synthetic shapes scenes) for the equivalence check")
    max_new_tokens: int = option(20, help="caption length in the check")
    tolerance: float | None = option(None, help="max |logit difference| allowed (default by dtype: "
                                     + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOLERANCE.items()) + ")")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, mps")
    trust_remote_code: bool = option(False, help="allow a base that ships its own model code (bridge); never on by "
                                     "default, and only this flag turns it on (an adapter whose train_config.yaml "
                                     "asks for it is refused without it)")
    allow_other_base: bool = option(False, help="with --base: merge into a base other than the one the adapter was "
                                    "trained on, on purpose (recorded in merge_check.json and said on the card)")

    def __post_init__(self):
        self.adapter = Path(self.adapter)
        self.out = Path(self.out)
        if self.dtype not in DTYPE_CHOICES:
            raise UserError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
        if not 1 <= self.probes <= MAX_PROBES:
            raise UserError(f"--probes must be from 1 to {MAX_PROBES} (got {self.probes})")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"--max-new-tokens must be from 1 to {MAX_NEW_TOKENS} (got {self.max_new_tokens})")
        if self.tolerance is not None and not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise UserError(f"--tolerance must be a number >= 0 (got {self.tolerance})")


@dataclass
class MergeResult:
    """Where the merged model went and what the equivalence check measured."""

    out: Path
    base: str
    family: str
    dtype: str
    check: dict[str, Any] = field(default_factory=dict)


def has_full_weights(folder: Path) -> bool:
    """True when ``folder`` holds a complete model (config.json + weights)."""
    return (folder / "config.json").is_file() and (
        any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def check_adapter_folder(adapter: Path) -> None:
    """Raise a UserError that says what to do when ``adapter`` is not a LoRA adapter folder."""
    if not adapter.is_dir():
        raise UserError(f"--adapter {adapter}: no such folder (pass the output folder of training/train.py)")
    if (adapter / "adapter_config.json").is_file():
        adapter_base(adapter)  # readable, and an object
        return
    if has_full_weights(adapter):
        raise UserError(f"--adapter {adapter} holds full model weights and no adapter_config.json: it is already "
                        f"merged (or fully fine-tuned); release it with `release push --model {adapter}`")
    raise UserError(f"--adapter {adapter}: no adapter_config.json there; pass the folder written by training/train.py")


def recorded_base(adapter: Path) -> tuple[str | None, str | None, str]:
    """(base id or folder, revision, where it is written) that ``adapter`` names as its base."""
    cfg = TrainConfigRecord.find(adapter)
    name = adapter_base(adapter)
    if name:
        return name, cfg.base_revision if cfg else None, "adapter_config.json"
    return (cfg.base, cfg.base_revision, TRAIN_CONFIG) if cfg else (None, None, TRAIN_CONFIG)


def trained_on_fingerprint(adapter: Path) -> str | None:
    """The fingerprint of the base ``adapter`` was trained on, from its training record
    (None when the run recorded none: written before fingerprints, or no metrics.json)."""
    record = TrainingRecord.find(adapter)
    return record.model.get("base_fingerprint") if record else None


def check_base(adapter: Path, base: str, revision: str | None, origin: str, *, allow_other: bool) -> dict[str, Any]:
    """Prove ``base`` is the base ``adapter`` was trained on, by weights fingerprint (or, when
    fingerprints are unknown, by name). Returns the record of the check for merge_check.json;
    raises a UserError naming both sides when they differ, unless ``allow_other``."""
    named, _, where = recorded_base(adapter)
    want = trained_on_fingerprint(adapter)
    have = model_fingerprint(base, revision)
    if want and have:
        same, how = want == have, "weights fingerprint"
    else:
        same, how = named is None or _same_name(named, base), "name (no fingerprint recorded)"
    record = {"trained_on": named, "trained_on_fingerprint": want, "base_fingerprint": have,
              "checked_by": how, "same_base": same}
    if not same and not allow_other:
        theirs = f"{named}" + (f" (weights {short(want)})" if want else "")
        raise UserError(f"{origin} {base} (weights {short(have)}) is not the base {adapter} was trained on: "
                        f"{theirs}, from its {where} and training record; pass that base, or add "
                        "--allow-other-base to merge into another base on purpose (the card will say so)")
    return record


def _same_name(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def resolve_base(adapter: Path, base: str | None) -> tuple[str, str | None, str]:
    """(base id or folder, revision, where it came from) for ``adapter``."""
    name, revision, origin = recorded_base(adapter)
    if base:
        return base, None, "--base"
    if not name:
        raise UserError(f"{adapter}: neither adapter_config.json nor train_config.yaml names the base model; "
                        "pass --base ID_OR_DIR")
    from captioning.loading import looks_local

    if looks_local(name) and not Path(name).is_dir():
        raise UserError(f"the base model {name} (from {adapter}/{origin}) is not on this machine; "
                        "pass --base with its hub id or a local copy")
    return name, revision, origin


def base_dtype(base: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """The dtype a checkpoint was saved in (fp32 when it does not say)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base, revision=revision, trust_remote_code=trust_remote_code)
    name = str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32")
    return _DTYPE_NAMES.get(name.replace("torch.", ""), "fp32")


def probe_images(n: int, size: int = 64, seed: int = 0) -> list:
    """``n`` synthetic shapes scenes: deterministic probe inputs that need no dataset."""
    from synthetic import shapes

    rng = random.Random(f"release.merge.probes/{seed}")
    return [shapes.render(shapes.sample_scene(rng, size), size) for _ in range(n)]


def _teacher_forced_logits(captioner, image, caption: str):
    """Logits over prompt + caption (the training-time encoding) for one image."""
    import torch

    fam = captioner.family
    ex = fam.encode_example(captioner.processor, image, caption, captioner.prompt)
    ex.pop("labels")
    inputs = {k: (v.to(captioner.device, dtype=captioner.dtype) if v.is_floating_point() else v.to(captioner.device))
              for k, v in ex.items()}
    with torch.inference_mode():
        return captioner.model(**inputs).logits.float().cpu()


def probe_outputs(captioner, images, max_new_tokens: int, logits_on: list[str] | None = None) -> dict[str, Any]:
    """Greedy captions (captioning.generation) and teacher-forced logits on ``images``.

    Logits are taken over prompt + ``logits_on`` captions (default: the model's own), so two
    models can be compared on the same token sequence even when their captions differ.
    """
    from captioning.generation import GenerationSettings, caption_images

    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    captions = [c[0] for c in caption_images(captioner, images, settings=settings, batch_size=len(images))]
    logits = [_teacher_forced_logits(captioner, im, cap) for im, cap in zip(images, logits_on or captions)]
    return {"captions": captions, "logits": logits}


def compare_outputs(reference: dict[str, Any], candidate: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The equivalence record: captions side by side, max |logit diff|, pass/fail.

    ``candidate`` logits must be taken on the reference captions (``probe_outputs(...,
    logits_on=reference["captions"])``), so a different caption cannot hide a logit difference.
    """
    diffs = [float((a - b).abs().max()) for a, b in zip(reference["logits"], candidate["logits"])]
    same = [a == b for a, b in zip(reference["captions"], candidate["captions"])]
    max_diff = max(diffs) if diffs else 0.0
    return {
        "n_probes": len(same),
        "max_abs_logit_diff": max_diff,
        "tolerance": tolerance,
        "identical_captions": sum(same),
        "passed": all(same) and max_diff <= tolerance,
        "probes": [{"reference": r, "merged": c, "max_abs_logit_diff": d}
                   for r, c, d in zip(reference["captions"], candidate["captions"], diffs)],
    }


def _prepare_out(out: Path, adapter: Path, force: bool) -> None:
    if out.resolve() == adapter.resolve():
        raise UserError(f"--out {out} is the adapter folder itself: pass a new folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty: pass --force to replace it, or choose a new folder")


def save_model_folder(model, processor, out: Path, dtype) -> list[str]:
    """Save weights + processor in the release layout; returns the compat changes made."""
    from release.compat import make_portable

    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return make_portable(out)


def merge_adapter(opts: MergeOptions, log: Callable[[str], None] = print) -> MergeResult:
    """Merge ``opts.adapter`` into its base, save it to ``opts.out``, and check it.

    Raises UserError (nothing written) when the check fails. ``opts.out``'s one writer
    (captioning.files.output_lock) while it runs.
    """
    with output_lock(opts.out, "--out", inputs={"--adapter": opts.adapter}, replaces=True):
        return _merge_adapter(opts, log)


def _merge_adapter(opts: MergeOptions, log: Callable[[str], None]) -> MergeResult:
    from captioning.loading import _DTYPES, load_captioner

    t0 = time.time()
    check_adapter_folder(opts.adapter)
    _prepare_out(opts.out, opts.adapter, opts.force)
    base, revision, origin = resolve_base(opts.adapter, opts.base)
    if Path(base).expanduser().is_dir():
        check_not_input(opts.out, "--out", {f"base model (from {origin})": base}, replaces=True)
    identity = check_base(opts.adapter, base, revision, origin, allow_other=opts.allow_other_base)
    train_cfg = TrainConfigRecord.find(opts.adapter) or TrainConfigRecord(path=opts.adapter / TRAIN_CONFIG)
    data_cfg, quant = train_cfg.section("data"), train_cfg.section("quantization")
    if train_cfg.trust_remote_code and not opts.trust_remote_code:
        # a file written by someone else never switches on code execution: only this command's flag does
        raise UserError(f"{train_cfg.path} asks for trust_remote_code: merging would run the Python code shipped "
                        f"with the base {base} (and copy it into the release); pass --trust-remote-code if you trust "
                        "that code")
    trust = opts.trust_remote_code
    out_dtype = base_dtype(base, revision, trust) if opts.dtype == "auto" else opts.dtype
    tolerance = DEFAULT_TOLERANCE[out_dtype] if opts.tolerance is None else opts.tolerance
    log(f"base: {base} (from {origin}{', revision ' + revision if revision else ''}; weights "
        f"{short(identity['base_fingerprint'])})")
    if not identity["same_base"]:
        log(f"note: --allow-other-base: {opts.adapter} was trained on {identity['trained_on']}, merging into {base}")
    bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None
    if bits:  # the keys training.config.QuantizationConfig writes
        log(f"training used a {bits}-bit base: merging into the full-precision base instead (never into "
            f"{bits}-bit)")

    # Merge and check in fp32 on every device: half-precision merges round twice,
    # and the check must measure the stored weights, not the compute dtype.
    cap = load_captioner(base, revision=revision, adapter=opts.adapter, dtype="fp32", device=opts.device,
                         load_in_4bit=False, trust_remote_code=trust,
                         image_longest_edge=data_cfg.get("image_longest_edge"),
                         image_splitting=data_cfg.get("image_splitting"))
    log(f"family: {cap.family.name}; prompt: {cap.prompt!r}; storage dtype: {out_dtype}")
    images = probe_images(opts.probes)
    reference = probe_outputs(cap, images, opts.max_new_tokens)

    with partial_folder(opts.out) as tmp:
        merged = cap.model.merge_and_unload()
        changes = save_model_folder(merged, cap.processor, tmp, _DTYPES[out_dtype])
        del merged, cap
        if (opts.adapter / TRAIN_CONFIG).is_file():
            shutil.copy2(opts.adapter / TRAIN_CONFIG, tmp / TRAIN_CONFIG)
        reloaded = load_captioner(str(tmp), dtype="fp32", device=opts.device, trust_remote_code=trust)
        candidate = probe_outputs(reloaded, images, opts.max_new_tokens, logits_on=reference["captions"])
        check = compare_outputs(reference, candidate, tolerance)
        check.update(base=base, base_revision=revision, adapter=str(opts.adapter), **identity,
                     adapter_fingerprint=weights_fingerprint(opts.adapter),
                     merged_fingerprint=weights_fingerprint(tmp), family=reloaded.family.name,
                     dtype=out_dtype, compute_dtype="fp32", device=str(reloaded.device), prompt=reloaded.prompt,
                     max_new_tokens=opts.max_new_tokens, compat_changes=changes,
                     versions=_versions())
        # merge_check.json is part of the release: no timings in it, so an unchanged re-release
        # writes identical bytes (and a re-push makes no commit)
        log(format_check(check) + f"\n  ({time.time() - t0:.1f} s)")
        if not check["passed"]:
            raise UserError(f"merge check failed: max |logit diff| {check['max_abs_logit_diff']:.3g} "
                            f"(tolerance {tolerance:g}), {check['identical_captions']}/{check['n_probes']} identical "
                            f"captions; nothing written to {opts.out} (try --dtype fp32)")
        write_record(tmp / MERGE_CHECK, KIND_MERGE_CHECK, check)
        del reloaded
        replace_folder(tmp, opts.out)
    return MergeResult(out=opts.out, base=base, family=check["family"], dtype=out_dtype, check=check)


def format_check(check: dict[str, Any]) -> str:
    """The equivalence check as a few printable lines."""
    lines = [f"merge check on {check['n_probes']} probe images: max |logit diff| {check['max_abs_logit_diff']:.3g} "
             f"(tolerance {check['tolerance']:g}), identical greedy captions "
             f"{check['identical_captions']}/{check['n_probes']} -> {'PASS' if check['passed'] else 'FAIL'}"]
    for i, p in enumerate(check["probes"]):
        mark = "=" if p["reference"] == p["merged"] else "!"
        lines.append(f"  probe {i}: {mark} {p['reference']!r}" + ("" if mark == "=" else f" vs {p['merged']!r}"))
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__}


__all__ = ["MergeOptions", "MergeResult", "merge_adapter", "check_adapter_folder", "resolve_base", "probe_images",
           "probe_outputs", "compare_outputs", "format_check", "save_model_folder", "has_full_weights"]
