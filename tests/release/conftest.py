"""Fixtures for the release tests: tiny bases, LoRA adapters that change outputs, merged
releases, probe images, a local Hub server, and transformers 4.57 in a side folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIDE_TF4 = REPO / ".venv" / "side-tf457"
SIDE_PACKAGES = ["transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2"]
#: probe images and caption length used throughout (small: these run on 2 shared CPU cores)
PROBES = 2
NEW_TOKENS = 12
TOKEN = "hf_TESTsecretTOKEN0123456789abcdef"


def _tiny_bases(root: Path) -> dict[str, Path]:
    import torch

    from synthetic.factory import build_model, build_random_model

    smol = build_random_model("idefics3", root / "idefics3", seed=0)
    # SmolVLM's rotary base is 100000; transformers 5 writes it only inside rope_parameters,
    # which 4.x ignores (falling back to 10000). A non-default base makes that visible.
    cfg_path = smol / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["text_config"]["rope_parameters"]["rope_theta"] = 100000.0
    cfg_path.write_text(json.dumps(cfg, indent=2))

    # The factory's tiny BLIP vision tower starts at ~0 (initializer_range 1e-10), so every
    # image gives the same caption; random vision weights make the probes differ.
    model, processor = build_model("blip", seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in model.vision_model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    blip = root / "blip"
    model.save_pretrained(blip)
    processor.save_pretrained(blip)
    return {"idefics3": smol, "blip": blip}


def make_adapter(family: str, base: Path, out: Path, *, seed: int = 0, logs: str = "tensorboard",
                 train_extra: dict | None = None) -> Path:
    """A LoRA adapter (peft, the family's default targets) whose B weights are random, so it
    changes the base's outputs, saved like a training output folder."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model

    from captioning.families import get_family
    from captioning.fingerprints import weights_fingerprint
    from captioning.records import KIND_TRAINING, write_record

    fam = get_family(family)
    model = fam.model_class().from_pretrained(base)
    n_linear = len(fam.language_linear_names(model))  # all targeted, as training's default does
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=fam.lora_targets(model)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    fam.load_processor(str(base)).save_pretrained(out)
    cfg = {"model": {"name_or_path": str(base), "family": family, "revision": None, "trust_remote_code": False,
                     "freeze_vision": True, "train_connector": False},
           "lora": {"enabled": True, "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": None},
           "quantization": {"load_in_4bit": False, "load_in_8bit": False},
           "data": {"source": "data/shapes", "train_split": "train", "val_split": "val", "prompt": fam.default_prompt},
           "optim": {"num_train_epochs": 1.0, "max_steps": 10, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "lr_scheduler_type": "cosine",
                     "optim": "adamw_torch", "precision": "auto", "seed": seed},
           "eval": {"metric_for_best": "CIDEr"}}
    for section, values in (train_extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    (out / "train_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the training record training/train.py leaves beside an adapter: what it was trained on
    write_record(out / "metrics.json", KIND_TRAINING, {
        "metrics": {}, "train": {"global_step": 10}, "history": [],
        "model": {"id": str(base), "family": family, "base_fingerprint": weights_fingerprint(base)},
        "lora_coverage": {"targeted": n_linear, "language_linear": n_linear, "left_out": [], "outside": [],
                          "source": "derived"}})
    losses = [(s, 3.0 / (1 + 0.3 * s)) for s in range(1, 11)]
    if logs == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(out / "logs"))
        for s, v in losses:
            w.add_scalar("train/loss", v, s)
        w.add_scalar("eval/loss", 1.5, 5)
        w.add_scalar("eval/loss", 1.1, 10)
        w.close()
    elif logs == "trainer_state":
        ck = out / "checkpoints" / "checkpoint-10"
        ck.mkdir(parents=True)
        hist = [{"step": s, "loss": v} for s, v in losses] + [{"step": 10, "eval_loss": 1.1}]
        (ck / "trainer_state.json").write_text(json.dumps({"log_history": hist, "global_step": 10}))
    return out


@pytest.fixture(scope="session")
def release_bases(tmp_path_factory) -> dict[str, Path]:
    return _tiny_bases(tmp_path_factory.mktemp("release-bases"))


@pytest.fixture(scope="session")
def adapters(release_bases, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release-adapters")
    return {"idefics3": make_adapter("idefics3", release_bases["idefics3"], root / "idefics3", logs="tensorboard"),
            "blip": make_adapter("blip", release_bases["blip"], root / "blip", logs="trainer_state")}


@pytest.fixture(scope="session")
def probe_images():
    from release.merge import probe_images as make

    return make(PROBES)


@pytest.fixture(scope="session")
def probe_pngs(probe_images, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("probe-pngs")
    paths = []
    for i, im in enumerate(probe_images):
        im.save(root / f"probe{i}.png")
        paths.append(root / f"probe{i}.png")
    return paths


def captions_of(model_dir, images, adapter=None) -> list[str]:
    """Greedy captions through the toolkit's own loading + generation path."""
    from captioning.generation import GenerationSettings, caption_images
    from captioning.loading import load_captioner

    cap = load_captioner(str(model_dir), adapter=adapter, dtype="fp32", device="cpu")
    return [c[0] for c in caption_images(cap, images, settings=GenerationSettings(max_new_tokens=NEW_TOKENS))]


@pytest.fixture(scope="session")
def prerelease_captions(adapters, probe_images) -> dict[str, list[str]]:
    """Captions of base + adapter before anything is merged or released."""
    return {fam: captions_of(ad, probe_images) for fam, ad in adapters.items()}


@pytest.fixture(scope="session")
def merged(adapters, tmp_path_factory) -> dict[str, Path]:
    from release.merge import MergeOptions, merge_adapter

    root = tmp_path_factory.mktemp("release-merged")
    return {fam: merge_adapter(MergeOptions(adapter=ad, out=root / fam, probes=PROBES, max_new_tokens=NEW_TOKENS),
                               log=lambda m: None).out for fam, ad in adapters.items()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub-compatible server on 127.0.0.1 that huggingface_hub (and transformers) talk to."""
    from huggingface_hub import constants

    from tests.hubserver import HubServer

    server = HubServer(tmp_path / "hub-store", token=TOKEN).start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the test server speaks LFS, not Xet
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # never read a real stored login
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def side_tf4() -> Path:
    """transformers 4.57 (+ its tokenizers and huggingface_hub) installed with pip --target into
    .venv/side-tf457, reused across runs; the first run downloads ~15 MB from PyPI."""
    marker = SIDE_TF4 / ".complete"
    if not marker.is_file():
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
               str(SIDE_TF4), *SIDE_PACKAGES]
        # --no-deps: everything else transformers 4.57 needs (numpy, regex, safetensors, ...) is in the venv
        subprocess.run(cmd, check=True, timeout=600)
        marker.write_text(" ".join(SIDE_PACKAGES) + "\n")
    return SIDE_TF4


def run_side_tf4(side: Path, jobs: list[dict], timeout: int = 300) -> dict:
    """Run ``jobs`` (see side_run.py) in a subprocess that imports transformers 4.57."""
    env = dict(os.environ, PYTHONPATH=str(side), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("side_run.py"))], input=json.dumps(jobs),
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=str(side.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
