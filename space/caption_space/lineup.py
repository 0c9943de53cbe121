"""The served models as a set: display names that tell each model apart, and the base and
fine-tune pairs among them (by the base a fine-tune names, or by weights fingerprint)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from captioning.errors import UserError
from captioning.fingerprints import weights_fingerprint

from .models import KIND_BASE, ModelInfo, description, same_model


def unique_labels(infos: list[ModelInfo]) -> None:
    """Make every display name tell its model apart, and link each fine-tune to the served
    base it names (``paired_base``, from :func:`base_pairs`).

    A name is kept as it is while no other model has it. Repeated names get, in turn, what
    the records say each model is (``shapes-tiny-style (LoRA fine-tune of shapes-tiny)`` vs
    ``shapes-tiny-style (LoRA adapter on shapes-tiny)``), then where it lives (the shortest
    tail of the folder or the hub id that differs), then the model's key: never a bare
    number, which says nothing about which is which.
    """
    for base, ft in base_pairs(infos):
        ft.paired_base = base
    names = {id(i): i.label for i in infos}
    quals: dict[int, list[str]] = {id(i): [] for i in infos}

    def shown(info: ModelInfo) -> str:
        q = quals[id(info)]
        return f"{names[id(info)]} ({', '.join(q)})" if q else names[id(info)]

    for qualify in (_what_qualifier, _where_qualifier, lambda info, group: info.key):
        counts = Counter(shown(i) for i in infos)
        groups: dict[str, list[ModelInfo]] = {}
        for info in infos:
            if counts[shown(info)] > 1:
                groups.setdefault(shown(info), []).append(info)
        for group in groups.values():
            extra = [qualify(i, group) for i in group]
            if len(set(extra)) > 1:
                for info, q in zip(group, extra, strict=True):
                    quals[id(info)].append(q)
    for info in infos:
        info.label = shown(info)


def _what_qualifier(info: ModelInfo, group: list[ModelInfo]) -> str:
    if info.kind == KIND_BASE:
        return "trained from random init" if info.from_scratch else "base"
    return description(info)


def _where_qualifier(info: ModelInfo, group: list[ModelInfo]) -> str:
    """The shortest tail of this model's id (folder or hub id) that no other in ``group`` shares."""
    def parts(i: ModelInfo) -> list[str]:
        return [p for p in i.entry.key.replace("\\", "/").split("/") if p]

    mine = parts(info)
    for n in range(1, len(mine) + 1):
        tail = "/".join(mine[-n:])
        if all("/".join(parts(o)[-n:]) != tail for o in group if o is not info):
            return tail
    return info.key


def _fingerprint(info: ModelInfo) -> str | None:
    """The weights fingerprint of a served model: recorded in its release.json, else hashed
    from a local folder, only when a release asks for its base this way."""
    if info.fingerprint is None and info.entry.local:
        try:
            info.fingerprint = weights_fingerprint(Path(info.entry.id).expanduser())
        except UserError as e:
            info.notes.append(str(e))
    return info.fingerprint


def base_pairs(infos: Sequence[ModelInfo]) -> list[tuple[ModelInfo, ModelInfo]]:
    """(base, fine-tune) pairs where a model names its base (by id, or by the weights
    fingerprint a release records) and the base is served too."""
    pairs = []
    for ft in infos:
        if not ft.base and not ft.base_fingerprint:
            continue
        for base in infos:
            if base is ft:
                continue
            if (ft.base and same_model(ft.base, base.entry.id)) or (
                    ft.base_fingerprint and ft.base_fingerprint == _fingerprint(base)):
                pairs.append((base, ft))
                break
    return pairs
