"""The output folder of a training run and its checkpoints: what may be written where,
which checkpoint ``--resume`` continues from and what a resume may change, and the final
files moved in (``metrics.json`` last, so its presence marks a finished run)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.records import (
    KIND_TRAINING,
    METRICS,
    TRAIN_CONFIG,
    TrainConfigRecord,
    TrainingRecord,
    write_record,
)
from training.config import TrainConfig

PREDICTIONS = "val_predictions.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
STAGING = ".staging"
_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                 "adapter_model.bin", "pytorch_model.bin")


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (None when it looks complete and readable).

    The Trainer writes trainer_state.json after the weights, optimizer, scheduler and RNG
    state, so a checkpoint without a readable one was cut off while being written.
    """
    if not path.is_dir():
        return "no such folder"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "incomplete (no trainer_state.json: the run stopped while writing it)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "corrupt trainer_state.json"
    weights = [path / n for n in _WEIGHT_FILES if (path / n).is_file()]
    if not weights:
        return "no model or adapter weights"
    for w in weights:
        if w.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(w), framework="pt") as f:
                    list(f.keys())
            except Exception as e:
                return f"corrupt {w.name} ({type(e).__name__})"
    for name in ("optimizer.pt", "scheduler.pt"):
        f = path / name
        if not f.is_file():
            return f"incomplete (no {name})"
        try:
            with zipfile.ZipFile(f) as z:  # torch.save writes a zip; a cut-off file has no directory
                z.namelist()
        except (zipfile.BadZipFile, OSError):
            return f"corrupt {name}"
    return None


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-N`` in ``folder``, oldest first."""
    out = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit():
                out.append((int(p.name[len("checkpoint-"):]), p))
    return sorted(out)


def select_checkpoint(out: Path, resume: bool | str, *, is_main: bool, log: Callable[[str], None]) -> Path:
    """The checkpoint ``--resume`` continues from: the given one, or the newest complete one
    under OUT/checkpoints. Incomplete ones newer than it are removed (by the main process)
    so they can neither be resumed nor kept by checkpoint rotation."""
    if isinstance(resume, str) and resume not in ("", "latest"):
        path = Path(resume)
        if not path.is_dir() and (out / CHECKPOINTS / resume).is_dir():
            path = out / CHECKPOINTS / resume
        problem = checkpoint_problem(path)
        if problem:
            raise UserError(f"--resume {resume}: cannot resume from it: {problem}")
        return path
    ckpts = list_checkpoints(out / CHECKPOINTS)
    if not ckpts:
        raise UserError(f"--resume: {out / CHECKPOINTS} holds no checkpoint (the run stopped before its first "
                        "save, or this is another folder): start again without --resume")
    problems = []
    for _step, path in reversed(ckpts):
        problem = checkpoint_problem(path)
        if problem is None:
            for note in problems:
                log(f"note: {note}")
            return path
        problems.append(f"{path.name} is unusable ({problem}); removed, resuming from an earlier one")
        if is_main:
            shutil.rmtree(path, ignore_errors=True)
    raise UserError(f"--resume: no usable checkpoint in {out / CHECKPOINTS}: "
                    + "; ".join(p.split(';')[0] for p in problems) + ". Start again without --resume")


#: settings a resumed run takes on. Everything else is baked into the checkpoint (weights,
#: optimizer and schedule state, data order, the model being trained): a change there would
#: not take effect, so --resume refuses it instead of recording a setting that never applied.
RESUME_SAFE = ("name", "optim.max_steps", "optim.num_train_epochs", "optim.num_threads", "data.num_workers",
               "eval.every_steps", "eval.batch_size", "eval.early_stopping_patience", "output.")


def resume_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """``key: old -> new`` for the settings ``cfg`` changes against the run being resumed;
    a UserError naming the first setting that cannot take effect on resume."""
    found = changes(saved, cfg.to_dict())
    # a key the saved config lacks is a setting a newer toolkit added: it runs at its default
    found = [(k, a, b) for k, a, b in found if _has_key(saved, k)]
    fixed = [(k, a, b) for k, a, b in found if not (k in RESUME_SAFE or k.startswith(RESUME_SAFE[-1]))]
    if fixed:
        shown = "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in fixed)
        raise UserError(f"--resume: {shown}: cannot take effect on a resumed run (its checkpoint holds the "
                        "weights, optimizer, schedule and data order of the old settings); drop the flag to resume "
                        f"as trained, or start a new run in another --output-dir. Settings a resume can change: "
                        f"{', '.join(k.rstrip('.') + ('*' if k.endswith('.') else '') for k in RESUME_SAFE)}")
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in found]


def _has_key(tree: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def finished_run(out: Path, cfg: TrainConfig) -> TrainingRecord | None:
    """The training record of a finished run in ``out`` that ``cfg`` would not train further
    (same step budget), else None."""
    record = TrainingRecord.find(out)
    if record is None:
        return None
    saved = TrainConfigRecord.find(out / CHECKPOINTS) or TrainConfigRecord.find(out)
    optim = saved.section("optim") if saved else {}
    if (optim.get("max_steps"), optim.get("num_train_epochs")) != (cfg.optim.max_steps, cfg.optim.num_train_epochs):
        return None
    return record


def failed_start(out: Path) -> bool:
    """True when ``out`` holds only what a run that failed before its first checkpoint left
    (checkpoints/ with no checkpoint in it, TensorBoard logs): nothing worth keeping, and
    nothing that should make the next run ask for --output.overwrite."""
    children = {p.name for p in out.iterdir()} if out.is_dir() else set()
    return bool(children) and children <= {CHECKPOINTS, LOGS} and not list_checkpoints(out / CHECKPOINTS)


def _looks_like_run(out: Path) -> bool:
    return (out / CHECKPOINTS).is_dir() or (out / TRAIN_CONFIG).is_file() or (out / METRICS).is_file()


def check_output(out: Path, cfg: TrainConfig, resume: bool | str) -> bool:
    """Refuse to mix runs in one folder; True when an earlier run is to be cleared
    (--output.overwrite)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir {out} is a file: pass a folder")
    for name in (METRICS, TRAIN_CONFIG, PREDICTIONS):  # files a run ends by writing: found now, not after it
        if (out / name).is_dir():
            raise UserError(f"{out / name} is a folder where the run writes a file: move it away")
    if resume:
        return False
    if out.is_dir() and any(out.iterdir()):
        if failed_start(out):
            return True  # an earlier start that failed before its first checkpoint: start over
        if not cfg.output.overwrite:
            raise UserError(f"output.dir {out} already holds files: pass --resume to continue that run, "
                            "--output.overwrite to replace it, or another --output-dir")
        if not _looks_like_run(out):
            raise UserError(f"output.dir {out} is not empty and holds no earlier training run: refusing to delete "
                            "it for --output.overwrite; pick another --output-dir")
        return True
    return False


def clear_output(out: Path) -> None:
    """Empty ``out`` (an earlier run being replaced with --output.overwrite)."""
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def publish(staging: Path, out: Path, metrics: dict) -> None:
    """Move the finished files from ``staging`` to the top of ``out`` (each an atomic
    rename), metrics.json last: its presence marks a complete output."""
    for item in sorted(staging.iterdir()):
        target = out / item.name
        if target.is_dir() and not item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()
    write_record(out / METRICS, KIND_TRAINING, metrics)


def changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every setting that differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out
