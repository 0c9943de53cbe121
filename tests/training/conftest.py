"""Fixtures for the training tests: a shared scorer, helpers to build configs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def scorer():
    """One eval.scoring.Scorer for every training test (validation uses CIDEr/BLEU only,
    so no METEOR JVM starts; the Scorer is shared as a training run would share it)."""
    from eval.scoring import Scorer

    with Scorer() as s:
        yield s


@pytest.fixture(scope="session")
def shapes_learn(tmp_path_factory):
    """A shapes set big enough to learn from in a short run (train 400 / val 32)."""
    from captioning.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes-learn"), seed=0, n_train=400, n_val=32, n_test=0)
