"""Helpers for tests of models loaded for serving (prepacked fp32, int8)."""

from __future__ import annotations

import torch


def linears(model) -> int:
    """How many plain ``nn.Linear`` layers ``model`` has."""
    return sum(type(m) is torch.nn.Linear for m in model.modules())


def not_served_by(plain, served, kind: type) -> list[str]:
    """The ``nn.Linear`` layers of ``plain`` that ``served`` (the same model loaded for serving)
    does not run as ``kind``, directly or as a sibling of a shared product of that kind."""
    from captioning.kernels import SiblingLinear

    layers = dict(served.named_modules())
    missing = []
    for path, module in plain.named_modules():
        if type(module) is torch.nn.Linear:
            layer = layers.get(path)
            if isinstance(layer, SiblingLinear):
                layer = layer.product.linear
            if not isinstance(layer, kind):
                missing.append(path)
    return missing
