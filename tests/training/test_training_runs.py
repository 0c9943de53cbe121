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

import torch
from safetensors.torch import load_file

from tests.training.helpers import config, tiny_recipe
from training.train import main, train

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    return env


def test_short_run_beats_the_untrained_model(shapes_learn, tmp_path, scorer, capsys):
    """~100 steps of shapes-tiny already caption clearly better than the random model: a broken
    loss mask, label shift or data pipeline fails here. Run through the CLI entry point."""
    import training.train as tt

    out = tmp_path / "learn"
    args = ["--config", str(ROOT / "training/recipes/shapes-tiny.yaml"), "--data.source", str(shapes_learn),
            "--output-dir", str(out), "--optim.max_steps", "100", "--eval.every_steps", "100",
            "--eval.loss_samples", "16", "--eval.generate_samples", "32", "--no-output.progress",
            "--no-output.tensorboard", "--data.num_workers", "0"]
    real_train = tt.train
    tt.train = lambda cfg, **kw: real_train(cfg, scorer=scorer, **kw)  # share the test session's scorer
    try:
        assert main(args) == 0
    finally:
        tt.train = real_train
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("done in ") and f"python eval/run.py generate --model {out}" in lines[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    history = {h["step"]: h for h in metrics["history"]}
    before, after = history[0], history[100]
    print(f"untrained CIDEr {before['CIDEr']:.3f} loss {before['loss']:.2f}; "
          f"after 100 steps CIDEr {after['CIDEr']:.3f} loss {after['loss']:.2f}")
    assert before["CIDEr"] < 0.1
    assert after["CIDEr"] > before["CIDEr"] + 0.2
    assert after["loss"] < before["loss"] - 3.0
    assert metrics["metrics"]["CIDEr"] == after["CIDEr"] and metrics["best"]["step"] == 100
    assert (out / "model.safetensors").is_file()


_SLOW_TRAIN = """
import json, sys, time
from transformers import TrainerCallback
from training.config import build_config
from training.train import train

class Slow(TrainerCallback):  # gives the test time to kill the run between checkpoints
    def on_step_end(self, *args, **kwargs):
        time.sleep(0.3)

train(build_config(json.loads(sys.argv[1])), callbacks=[Slow()])
"""


def test_sigkill_then_resume_gives_the_same_adapter(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "straight",
                         lora={"dropout": 0.1}, data={"max_train_samples": 32, "references": "sample"},
                         optim={"max_steps": 20, "lr": 5e-3, "batch_size": 4},
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
           "--optim.batch_size", "4", "--data.max_train_samples", "32", "--data.num_workers", "0",
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
