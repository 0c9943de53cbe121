"""A validation never ends a training run: an empty caption scores as matching nothing (as in
`eval/run.py generate`), any other failure of captioning or scoring is one log line and the
run goes on; a run that fails for another reason keeps its last checkpoint (issue 30)."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

import training.evaluation as evaluation
from tests.training.helpers import config, tiny_recipe
from training.train import train

EVAL = {"enabled": True, "every_steps": 2, "loss_samples": 4, "generate_samples": 4, "batch_size": 4,
        "max_new_tokens": 4}


def _recipe(tiny_models, shapes_dir, out, **over):
    return tiny_recipe(tiny_models["idefics3"], shapes_dir, out, eval=EVAL,
                       output={"tensorboard": False, **over.pop("output", {})}, **over)


def _history(out) -> dict[int, dict]:
    return {h["step"]: h for h in json.loads((out / "metrics.json").read_text())["history"]}


def test_an_empty_caption_scores_as_matching_nothing_and_is_listed(tiny_models, shapes_dir, tmp_path, scorer,
                                                                    monkeypatch):
    """A random model's first token can be a newline: that caption is empty, scored 0 the way
    eval scores it, counted in the validation's log line and in its history entry."""
    real = evaluation.caption_images

    def first_empty(*args, **kwargs):
        caps = real(*args, **kwargs)
        return [["\n"]] + caps[1:]

    monkeypatch.setattr(evaluation, "caption_images", first_empty)
    notes: list[str] = []
    out = train(config(_recipe(tiny_models, shapes_dir, tmp_path / "run")), scorer=scorer, log=notes.append)

    entry = _history(out)[2]
    assert entry["empty_captions"] == 1 and isinstance(entry["CIDEr"], float) and "loss" in entry
    line = next(n for n in notes if n.startswith("[validation @ step 2]"))
    assert "1 of 4 captions empty" in line and "val/000000.png" in line, line
    preds = json.loads((out / "val_predictions.json").read_text())
    assert preds[0]["caption"] == "\n" and len(preds) == 4
    assert json.loads((out / "metrics.json").read_text())["metrics"]["CIDEr"] == entry["CIDEr"]


def test_a_failing_validation_is_one_line_and_the_run_goes_on(tiny_models, shapes_dir, tmp_path, scorer,
                                                               monkeypatch):
    """Captioning that raises at step 2 and scoring that raises at step 4: each is one log line,
    the loss of that validation is kept, its caption metrics are missing, and the run finishes
    with the validation that worked (step 6) as its best."""
    real = evaluation.caption_images
    calls = {"n": 0}

    def caption_fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory\n(while captioning)")
        return real(*args, **kwargs)

    class FailingOnce:
        def __init__(self):
            self.n = 0

        def score(self, *args, **kwargs):
            self.n += 1
            if self.n == 1:
                raise ValueError("the METEOR JVM died")
            return scorer.score(*args, **kwargs)

    monkeypatch.setattr(evaluation, "caption_images", caption_fails_once)
    notes: list[str] = []
    recipe = _recipe(tiny_models, shapes_dir, tmp_path / "run", optim={"max_steps": 6})
    out = train(config(recipe), scorer=FailingOnce(), log=notes.append)

    hist = _history(out)
    assert set(hist) == {2, 4, 6}
    for step, why in ((2, "RuntimeError: CUDA out of memory (while captioning)"),
                      (4, "ValueError: the METEOR JVM died")):
        assert "loss" in hist[step] and "CIDEr" not in hist[step], hist[step]
        assert why in hist[step]["caption_error"]
        said = [n for n in notes if n.startswith(f"[validation @ step {step}]")]
        assert len(said) == 1 and why in said[0] and "\n" not in said[0], said
    assert isinstance(hist[6]["CIDEr"], float) and "caption_error" not in hist[6]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["step"] == 6 and metrics["metrics"]["CIDEr"] == hist[6]["CIDEr"]


def test_a_run_whose_only_validation_failed_finishes_with_its_loss(tiny_models, shapes_dir, tmp_path):
    """The kept validation has no caption metrics: metrics.json says why, under unavailable."""

    class Broken:
        def score(self, *args, **kwargs):
            raise OSError("No space left on device")

    notes: list[str] = []
    out = train(config(_recipe(tiny_models, shapes_dir, tmp_path / "run")), scorer=Broken(), log=notes.append)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"loss", "perplexity"} and metrics["best"]["step"] == 2
    assert set(metrics["unavailable"]) == {"CIDEr", "Bleu_4"}
    assert "OSError: No space left on device" in metrics["unavailable"]["CIDEr"]
    assert notes[-1].startswith("done in ") and any(n.startswith("validation (4 images, step 2): loss") for n in notes)


class _Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("boom")


def test_a_run_that_fails_otherwise_keeps_its_last_checkpoint(tiny_models, shapes_dir, tmp_path, scorer):
    out = tmp_path / "run"
    recipe = _recipe(tiny_models, shapes_dir, out, optim={"max_steps": 4})
    with pytest.raises(RuntimeError, match="boom"):
        train(config(recipe), scorer=scorer, log=lambda *_: None, callbacks=[_Boom()])
    assert (out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert not (out / "metrics.json").exists()
