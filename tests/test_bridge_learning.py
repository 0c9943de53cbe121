"""The bridge learns: a short shapes-bridge-tiny run through training.train beats the
untrained (zero-gated) bridge on CIDEr, and only the bridge's weights change.

Stage 1 (bridge-shapes-lm-tiny) trains the tiny language model on the shapes captions
text-only (the zero-gated, frozen bridge passes no image); stage 2 (shapes-bridge-tiny)
trains the bridge alone over that frozen LM and the frozen random backbone. Both stages are
the checked-in recipes, shortened by flags. ~1-2 minutes on 2 busy CPU cores.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"
QUIET = ["--output.progress", "false", "--output.tensorboard", "false"]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from captioning.shapes import generate

    return generate(tmp_path_factory.mktemp("bridge-shapes"), seed=0, n_train=1000, n_val=50, n_test=0)


def test_shapes_bridge_beats_its_untrained_state(shapes_data, tmp_path):
    from eval.scoring import Scorer
    from training.config import load_config
    from training.train import train

    with Scorer() as scorer:
        lm = train(load_config(["--config", str(RECIPES / "bridge-shapes-lm-tiny.yaml"),
                                "--data.source", str(shapes_data), "--output-dir", str(tmp_path / "lm"),
                                "--optim.max_steps", "120",
                                "--eval.enabled", "false", *QUIET]), scorer=scorer, log=lambda *_: None)
        bridge = train(load_config(["--config", str(RECIPES / "shapes-bridge-tiny.yaml"), "--data.source",
                                    str(shapes_data), "--model.name_or_path", str(lm),
                                    "--output-dir", str(tmp_path / "bridge"), "--optim.max_steps", "200",
                                    "--optim.lr", "2e-2", "--optim.warmup_steps", "10", "--eval.every_steps", "200",
                                    "--eval.generate_samples", "50", *QUIET]), scorer=scorer, log=lambda *_: None)

    record = json.loads((bridge / "metrics.json").read_text())
    before = next(h for h in record["history"] if h["step"] == 0)["CIDEr"]  # eval.on_start: zero-gated bridge
    after = record["metrics"]["CIDEr"]
    print(f"shapes val CIDEr (50 images): untrained bridge {before:.3f} -> trained {after:.3f}")
    assert after > before + 0.15 and after > 1.5 * before, (before, after)
    assert record["model"]["trainable"] < 0.25 * record["model"]["total"]

    old, new = load_file(str(lm / "model.safetensors")), load_file(str(bridge / "model.safetensors"))
    assert old.keys() == new.keys()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("bridge.") for k in changed)
    assert any(k.endswith("attn_gate") for k in changed)  # the gates opened
