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
