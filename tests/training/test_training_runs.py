"""Whole runs: the tiny model learns the shapes, a SIGKILLed run resumes to the same weights,
and two processes train through accelerate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import learning
from tests.training.helpers import config, tiny_recipe
from training.train import main, train

ROOT = Path(__file__).resolve().parents[2]
CIDER_UNTRAINED_MAX, CIDER_GAIN, LOSS_DROP = 0.1, 0.2, 3.0


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    return env


def test_short_run_beats_the_untrained_model(tmp_path, scorer, capsys):
    """~100 steps of shapes-tiny already caption clearly better than the random model: a broken
    loss mask, label shift or data pipeline fails here. Run through the CLI entry point.

    Thresholds from tests/learning.py's spread (5 seeds x 1 and 2 torch threads; BENCHMARKS.md,
    "Learning tests"), CIDEr on 100 val images: untrained 0.010-0.014, after 100 steps
    0.375-0.481 (a gain of at least 0.36); val loss 5.98-6.02 -> 1.21-1.24 (a drop of at
    least 4.7). The test asks for about half of each. (With 32 val images CIDEr after 100
    steps spread over 0.29-0.58: too noisy for a margin of 0.2.)"""
    import training.train as tt

    out = tmp_path / "learn"
    data = learning.shapes_data(tmp_path / "data", seed=0, n_train=400, n_val=100)
    real_train = tt.train
    tt.train = lambda cfg, **kw: real_train(cfg, scorer=scorer, **kw)  # share the test session's scorer
    try:
        assert main(learning.shapes_tiny_argv(data, out)) == 0
    finally:
        tt.train = real_train
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("done in ") and f"python eval/run.py generate --model {out}" in lines[-1]
    got = learning.before_after(out)
    print(f"untrained CIDEr {got['cider_before']:.3f} loss {got['loss_before']:.2f}; "
          f"after 100 steps CIDEr {got['cider_after']:.3f} loss {got['loss_after']:.2f}")
    assert got["cider_before"] < CIDER_UNTRAINED_MAX
    assert got["cider_after"] > got["cider_before"] + CIDER_GAIN
    assert got["loss_after"] < got["loss_before"] - LOSS_DROP
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["CIDEr"] == got["cider_after"] and metrics["best"]["step"] == 100
    assert (out / "model.safetensors").is_file()


_SLOW_TRAIN = """
import json, sys, time
from transformers import TrainerCallback
from training.flags import build_config
from training.train import train

class Slow(TrainerCallback):  # gives the test time to kill the run between checkpoints
    def on_step_end(self, *args, **kwargs):
        time.sleep(0.3)

train(build_config(json.loads(sys.argv[1])), callbacks=[Slow()])
"""


def test_sigkill_then_resume_gives_the_same_adapter(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "straight",
                         lora={"dropout": 0.1}, data={"max_train_samples": 32, "references": "sample"},
                         optim={"max_steps": 20, "learning_rate": 5e-3, "per_device_train_batch_size": 4},
                         output={"save_every_steps": 4, "save_total_limit": 2, "tensorboard": False,
                                 "logging_steps": 5})
    straight = train(config(recipe), log=lambda *_: None)

    killed_dir = tmp_path / "killed"
    killed = {**recipe, "output": {**recipe["output"], "dir": str(killed_dir)}}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_TRAIN, json.dumps(killed)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = killed_dir / "checkpoints" / "checkpoint-12" / "trainer_state.json"
    deadline = time.time() + 240
    try:
        while not marker.is_file():
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no checkpoint-12 in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "metrics.json").exists() and not (killed_dir / "adapter_model.safetensors").exists()
    # a checkpoint cut off while being written (what a kill during a save leaves behind)
    partial = killed_dir / "checkpoints" / "checkpoint-16"
    if not (partial / "trainer_state.json").is_file():
        partial.mkdir(exist_ok=True)
        (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)
        (partial / "trainer_state.json").unlink(missing_ok=True)

    notes = []
    resumed = train(config(killed), resume=True, log=notes.append)
    assert any("checkpoint-16 is unusable" in n for n in notes) or not partial.exists()
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    m = json.loads((resumed / "metrics.json").read_text())
    assert m["train"]["global_step"] == 20


def test_two_processes_through_accelerate(tmp_path, shapes_dir):
    out = tmp_path / "ddp"
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "training.train", "--config", str(ROOT / "training/recipes/shapes-tiny.yaml"),
           "--data.source", str(shapes_dir), "--output-dir", str(out), "--optim.max_steps", "4",
           "--optim.per_device_train_batch_size", "4", "--data.max_train_samples", "32", "--data.num_workers", "0",
           "--eval.every_steps", "4", "--eval.loss_samples", "4", "--eval.generate_samples", "4",
           "--no-eval.on_start", "--no-output.progress", "--no-output.tensorboard"]
    run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # 4 steps x 4 images x 2 processes = one epoch of 32 images: the data was split, not repeated
    assert metrics["train"]["global_step"] == 4 and abs(metrics["train"]["epoch"] - 1.0) < 1e-6
    assert metrics["n_images"] == 4 and metrics["metrics"]["CIDEr"] is not None
    assert (out / "model.safetensors").is_file()
    assert run.stdout.strip().splitlines()[-1].startswith("done in ")


def _snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_what_cannot_apply_records_what_can_and_leaves_a_finished_run_alone(
        tiny_models, shapes_dir, tmp_path, capsys):
    import yaml

    from captioning.errors import UserError
    from tests.training.helpers import merge

    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "r",
                         optim={"max_steps": 4, "learning_rate": 3e-3},
                         output={"save_every_steps": 2, "tensorboard": False})
    out = train(config(recipe), log=lambda *_: None)
    before = _snapshot(out)
    # --resume of a finished run (the README's command run twice): nothing to do, no file touched
    assert train(config(recipe), resume=True, log=print) == out
    assert "already finished at step 4" in capsys.readouterr().out
    assert _snapshot(out) == before
    # a changed learning rate cannot take effect (the optimizer and schedule come from the checkpoint)
    with pytest.raises(UserError, match=r"--resume: optim.learning_rate 0.003 -> 0.1: cannot take effect on a resumed"):
        train(config(merge(recipe, {"optim": {"learning_rate": 0.1, "max_steps": 6}})), resume=True,
              log=lambda *_: None)
    assert _snapshot(out) == before
    # more steps can: applied, and recorded as a change at the step it took effect
    train(config(merge(recipe, {"optim": {"max_steps": 6}})), resume=True, log=lambda *_: None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "training" and metrics["train"]["global_step"] == 6
    assert metrics["resumed"] == [{"from_step": 4, "changes": ["optim.max_steps: 4 -> 6"]}]
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["optim"]["max_steps"] == 6 and saved["optim"]["learning_rate"] == 3e-3


def test_resume_takes_settings_a_newer_toolkit_added_at_their_defaults():
    """A run saved before a setting existed resumes: the new key is not a change."""
    from training.flags import build_config
    from training.outputs import resume_changes

    cfg = build_config({"model": {"name_or_path": "m"}, "data": {"source": "s"}})
    saved = cfg.to_dict()
    del saved["data"]["max_pixels"]
    assert resume_changes(saved, cfg) == []
    saved["optim"]["learning_rate"] = 1.0
    with pytest.raises(Exception, match="optim.learning_rate 1.0 -> 0.0001: cannot take effect"):
        resume_changes(saved, cfg)
