"""Helpers shared by the training tests (tiny configs, parameter snapshots)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import TrainerCallback


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def tiny_recipe(model_path: Path | None, shapes: Path, out: Path, **over) -> dict:
    """A few-step run on a tiny model: LoRA by default, no validation, one thread."""
    recipe = {
        "name": "test",
        "model": {"name_or_path": str(model_path)} if model_path else {},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": str(shapes), "train_split": "train", "val_split": "val", "max_train_samples": 16},
        "optim": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "num_threads": 1, "seed": 0,
                  "warmup_steps": 0},
        "eval": {"enabled": False},
        "output": {"dir": str(out), "progress": False, "logging_steps": 1},
    }
    return merge(recipe, over)


def config(recipe: dict):
    from training.flags import build_config

    return build_config(recipe)


class Snapshot(TrainerCallback):
    """Parameters at the start and the end of training (to see what changed)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.modules = {n: type(m).__name__ for n, m in model.named_modules()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}

    def changed(self) -> set[str]:
        return {n for n, p in self.before.items() if not torch.equal(p, self.after[n])}


def memorise(cap, images, captions, *, steps: int, stop_loss: float) -> None:
    """Full fine-tuning of ``cap.model`` in place until it reproduces ``captions`` (one per
    image; loss under ``stop_loss`` or ``steps`` steps, AdamW lr 1e-2, seeded), left in eval
    mode: a model with clear margins, unlike random weights."""
    from training.engine import caption_loss

    fam, proc, model = cap.family, cap.processor, cap.model
    batch = fam.collate(proc, [fam.encode_example(proc, im, c, cap.prompt) for im, c in zip(images, captions)])
    loss_fn = caption_loss(shift=fam.shifts_labels)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < stop_loss:
            break
    model.eval()
