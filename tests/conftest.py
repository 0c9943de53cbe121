"""Shared fixtures: tiny random models and the synthetic shapes set, offline."""

import os
import tempfile

# Before anything imports huggingface_hub/transformers/gradio: no network, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="gradio-tests-"))

from pathlib import Path

import pytest
import torch

# TEST_TORCH_THREADS=1 for a suite run beside another torch job: two 2-thread jobs on 2 cores
# run about 10x slower each
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small shapes set (train 64 / val 16 / test 16)."""
    from synthetic.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes"), seed=0, n_train=64, n_val=16, n_test=16)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random models of each factory family, saved in the Hugging Face layout."""
    from synthetic.factory import BUILDERS, build_random_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {fam: build_random_model(fam, root / fam) for fam in BUILDERS}


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory):
    """Tiny random model folders of any architecture synthetic.factory builds (``arch`` ->
    folder), built on first use. Tests load them; none writes into them."""
    from synthetic.factory import build_random_model

    root = tmp_path_factory.mktemp("archs")
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build_random_model(arch, root / arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def shapes_images(shapes_dir):
    """A handful of decoded shapes test images."""
    from captioning.images import load_image

    files = sorted((shapes_dir / "images" / "test").glob("*.png"))[:6]
    return [load_image(f) for f in files]
