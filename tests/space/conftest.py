"""Fixtures for the Space tests: the app module, a set of tiny released-looking models,
the core's own captions to compare against, and a network guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.space.helpers import load_app_module


@pytest.fixture(scope="session")
def space_app():
    return load_app_module()


def _metrics(cider: float, bleu4: float, source: str, model: dict) -> dict:
    """A metrics.json as eval/run.py writes it (DESIGN.md contract)."""
    return {"metrics": {"Bleu_1": bleu4 + 0.3, "Bleu_2": bleu4 + 0.2, "Bleu_3": bleu4 + 0.1, "Bleu_4": bleu4,
                        "METEOR": 0.2, "ROUGE_L": 0.4, "CIDEr": cider, "SPICE": None},
            "unavailable": {"SPICE": "needs Stanford CoreNLP (offline)"}, "n_images": 16,
            "dataset": {"source": source, "split": "test", "hash": "0" * 16}, "model": model,
            "generation": {"max_new_tokens": 30, "num_beams": 1}, "prompt": None, "versions": {},
            "command": "python eval/run.py generate ...", "created": "2026-01-01T00:00:00Z", "seconds": 1.0}


@pytest.fixture(scope="session")
def space_models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Folders laid out like releases: a base SmolVLM-like model, a "fine-tune" that names
    it as its base (card front matter + train_config.yaml), a BLIP model, each with a
    metrics.json; plus a broken folder that cannot load.

    The fine-tune is a real release folder, written by ``release push --to-dir`` (card,
    portable checkpoint, eval record); the others are factory models with a metrics.json.
    """
    from captioning.fingerprints import weights_fingerprint
    from release.push import PushOptions, push
    from synthetic.factory import build_random_model

    root = tmp_path_factory.mktemp("space-models")
    base = root / "tiny-smolvlm"
    shutil.copytree(tiny_models["idefics3"], base)
    (base / "metrics.json").write_text(json.dumps(_metrics(0.123, 0.045, "shapes", {"id": str(base)})))

    staged = build_random_model("idefics3", root / "staging" / "tiny-smolvlm-ft", seed=1)
    (staged / "train_config.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(base), "family": "idefics3", "revision": None, "trust_remote_code": False},
        "data": {"source": "shapes", "split": "train", "prompt": "Give a concise caption."}}))
    eval_dir = root / "staging" / "eval"
    eval_dir.mkdir()
    (eval_dir / "metrics.json").write_text(json.dumps(_metrics(0.876, 0.321, "shapes", {
        "id": str(staged), "weights_fingerprint": weights_fingerprint(staged)})))
    ft = root / "tiny-smolvlm-ft"
    push(PushOptions(repo_id="tests/tiny-smolvlm-ft", model=staged, eval_dir=eval_dir, to_dir=ft,
                     license="apache-2.0"), log=lambda _msg: None)
    assert (ft / "README.md").is_file() and (ft / "metrics.json").is_file()

    blip = root / "tiny-blip"
    shutil.copytree(tiny_models["blip"], blip)
    (blip / "metrics.json").write_text(json.dumps(_metrics(0.456, 0.111, "shapes", {"id": str(blip)})))

    broken = root / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return {"base": base, "ft": ft, "blip": blip, "broken": broken}


@pytest.fixture(scope="session")
def core_captioners(space_models):
    """The captioning core's own captioners (lazily loaded), to check the Space's output: loaded
    as the Space loads them (its default --quantize auto: int8 on CPU for the families whose
    int8 captions passed the quality gate)."""
    from captioning.loading import load_captioner

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_captioner(space_models[name], quantize="auto")
        return cache[name]

    return get


@pytest.fixture(scope="module")
def guard():
    """Refuse (and record) every non-loopback connection for a module's tests."""
    from tests.space.helpers import NetworkGuard

    g = NetworkGuard().install()
    yield g
    g.uninstall()
    assert not g.violations, f"non-loopback network use: {g.violations}"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Debian's chromium through Playwright, one per module."""
    from playwright.sync_api import sync_playwright

    from tests.space.helpers import launch_chromium

    with sync_playwright() as p:
        b = launch_chromium(p, tmp_path_factory.mktemp("chromium-home"))
        yield b
        b.close()
