"""Whether two records' numbers can stand side by side, in plain words: what the Space and
the card say. (captioning.records.not_comparable is the compact form eval/compare.py prints.)"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captioning.files import read_json_file
from captioning.records import (
    KIND_EVAL,
    KIND_TRAINING,
    METRICS,
    EvalRecord,
    TrainingRecord,
    checked_record,
    kind_of,
    record_path,
)
from captioning.vocabulary import style_of


def read_scores(path: str | os.PathLike) -> EvalRecord | TrainingRecord:
    """The metrics.json at ``path`` (a file, or a folder holding one) of either kind: an eval
    record, or a training record (validation during training); a UserError otherwise."""
    path = record_path(path, METRICS)
    doc = read_json_file(path)
    cls = TrainingRecord if kind_of(doc) == KIND_TRAINING else EvalRecord
    return cls(path=path, doc=checked_record(path, doc, cls.KIND))


def scores_record(doc: Mapping[str, Any]) -> EvalRecord | TrainingRecord:
    """A parsed metrics.json as the typed view of its kind (a training record when its keys
    say so, else an eval record), for numbers already read."""
    cls = TrainingRecord if kind_of(doc) == KIND_TRAINING else EvalRecord
    return cls(path=Path(METRICS), doc=dict(doc))


def score_basis(record: EvalRecord | TrainingRecord) -> dict[str, Any]:
    """What must agree for two records' numbers to stand side by side: how they were measured
    (``eval``, or ``training`` for validation during training, which runs with the training
    run's own settings and picks its best checkpoint on that very set) and
    :meth:`EvalRecord.identity` (split, caption transform, image count, references hash,
    tokenization)."""
    measured = KIND_TRAINING if isinstance(record, TrainingRecord) else KIND_EVAL
    return {"measured": measured, **EvalRecord(path=record.path, doc=record.doc).identity()}


def references_words(transform: str | None) -> str:
    """``plain references`` or ``style references (NAME)``: the captions a score was measured
    against, in words."""
    return "plain references" if style_of(transform) is None else f"style references ({transform})"


def measured_words(basis: Mapping[str, Any]) -> str:
    """``measured during training on val`` or ``eval on test``: how a record's numbers came about."""
    split = basis.get("split") or "an unrecorded split"
    return f"measured during training on {split}" if basis.get("measured") == KIND_TRAINING else f"eval on {split}"


def why_not_comparable(a: EvalRecord | TrainingRecord, b: EvalRecord | TrainingRecord) -> list[str]:
    """Why ``b``'s numbers cannot stand beside ``a``'s, in plain words, ``b``'s side first
    ("different split: val vs test"); empty when they can. The references hash differs
    whenever the split, caption style or image count does, so it is named only when nothing
    else explains it; a missing hash is a reason, since then the records cannot say the
    images and references agree."""
    ia, ib = score_basis(a), score_basis(b)
    why = []
    if ia["measured"] != ib["measured"]:
        why.append(f"{measured_words(ib)} vs {measured_words(ia)}")
    elif ia["split"] != ib["split"]:
        why.append(f"different split: {ib['split'] or 'unrecorded'} vs {ia['split'] or 'unrecorded'}")
    if ia["caption transform"] != ib["caption transform"]:
        why.append(f"scored against {references_words(ib['caption transform'])} "
                   f"vs {references_words(ia['caption transform'])}")
    if ia["n_images"] != ib["n_images"]:
        why.append(f"different image count: {ib['n_images'] or 'unrecorded'} vs {ia['n_images'] or 'unrecorded'}")
    if ia["tokenized"] != ib["tokenized"]:
        why.append("scored " + ("with vs without" if ib["tokenized"] else "without vs with") + " tokenization")
    if not why and not (ia["references"] and ib["references"]):
        why.append("dataset content not recorded (no references hash)")
    elif not why and ia["references"] != ib["references"]:
        why.append("different images or reference captions (dataset content differs)")
    return why
