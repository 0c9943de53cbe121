"""What scoring accepts: the references / predictions files and dicts, captions, metric names.

Every way an input can be wrong is a one-line :class:`UserError`, raised before any JVM starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from captioning.errors import UserError
from captioning.files import read_json_file
from captioning.vocabulary import BLEU_NAMES, COCO_METRICS

SACREBLEU_KEY = "sacreBLEU_corpus_0_100"

#: what an empty predicted caption is scored as (with allow_empty): one token that matches no
#: reference, so every per-image score of that image is 0. pycocoevalcap cannot take an empty
#: hypothesis (ROUGE-L divides by its length; METEOR's line protocol has no empty line).
EMPTY_STANDIN = "emptycaptionzz"

#: the longest caption scored, in characters. Real captions are tens of words; the METEOR JVM
#: dies on a megabyte-long line and the tokenizer crawls through very long ones, so a longer
#: caption means a broken file, refused before any JVM starts.
MAX_CAPTION_CHARS = 10_000

# PTBTokenizer (-preserveLines) starts a new output line at each of these, which would shift
# every later caption onto the wrong image in COCOEvalCap (it only replaces "\n"). A space is
# what the caption author meant.
LINE_BREAKS = re.compile("[\r\n\x0b\x0c\u2028\u2029]")


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file through :func:`captioning.files.read_json_file` (one-line
    :class:`UserError` for every way it can be unreadable, files over 2 GiB refused).

    ``what`` names the file in messages. ``"references"`` must be a COCO caption annotations
    object (a dict with an ``annotations`` list) and ``"predictions"`` a COCO results list;
    any other ``what`` only has to parse.
    """
    data = read_json_file(path, f"{what} file")
    kind = what.lower()
    if kind.startswith("reference"):
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            got = type(data).__name__ if not isinstance(data, dict) else \
                f"an object with keys {sorted(data)[:6]}"
            raise UserError(f"{what} file {path} must be COCO caption annotations "
                            f'({{"images": [...], "annotations": [...]}}), got {got}')
    elif kind.startswith("prediction"):
        if not isinstance(data, list):
            hint = " (it looks like a references file)" if isinstance(data, dict) and \
                "annotations" in data else ""
            raise UserError(f"{what} file {path} must be a COCO results list "
                            f'([{{"image_id": ..., "caption": "..."}}, ...]), got '
                            f"{type(data).__name__}{hint}")
    return data


def resolve_metrics(metrics: Iterable[str] | None) -> set:
    """The metric names to compute: all of :data:`~captioning.vocabulary.COCO_METRICS` for
    None; "Bleu" means all four."""
    if metrics is None:
        return set(COCO_METRICS)
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    want = set()
    for m in metrics:
        m = m.strip()
        if m in ("Bleu", "BLEU"):
            want |= set(BLEU_NAMES)
        elif m in COCO_METRICS:
            want.add(m)
        else:
            raise UserError(f"unknown metric {m!r}: choose from {', '.join(COCO_METRICS)} "
                            "(or Bleu for all four)")
    if not want:
        raise UserError(f"--metrics selects no metric: name one or more of {', '.join(COCO_METRICS)} "
                        "(or Bleu for all four)")
    return want


def _few(ids: list, k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (f", ... ({len(ids) - k} more)" if len(ids) > k else "")


def check_caption(caption: Any, image_id: Any, kind: str, tokenize: bool) -> str:
    """``caption`` if it can be scored; a UserError naming the image otherwise."""
    if not isinstance(caption, str):
        raise UserError(f"{kind} caption for image id {image_id!r} is "
                        f"{type(caption).__name__}, not a string")
    if len(caption) > MAX_CAPTION_CHARS:
        raise UserError(f"{kind} caption for image id {image_id!r} is {len(caption):,} characters long: captions "
                        f"over {MAX_CAPTION_CHARS:,} are refused (a real caption is a sentence); check the file")
    if not caption.strip():
        raise UserError(f"{kind} caption for image id {image_id!r} is empty or whitespace-only")
    if not tokenize and LINE_BREAKS.search(caption):
        # Without the tokenizer nothing removes them, and METEOR's line protocol would desync.
        raise UserError(f"{kind} caption for image id {image_id!r} contains a line break; "
                        "with tokenize=False captions must be single lines")
    return caption


def _image_order(images: Any) -> tuple[list, set]:
    """The ids of references["images"], first occurrence each, in file order."""
    order: list = []
    listed: set = set()
    if not isinstance(images, list):
        raise UserError('references["images"] must be a list of {"id": ...} objects')
    for img in images:
        if not isinstance(img, dict) or "id" not in img:
            raise UserError(f'references["images"] has an entry without "id": {img!r:.80}')
        try:
            if img["id"] not in listed:
                listed.add(img["id"])
                order.append(img["id"])
        except TypeError:
            raise UserError(f"references image id {img['id']!r:.40} is not a number or "
                            "string") from None
    return order, listed


def _reference_captions(annotations: list, listed: set | None, tokenize: bool) -> dict:
    """{image id: [reference captions]}; ``listed``: the ids references["images"] declares
    (None when it has no such list)."""
    refs: dict = {}
    for ann in annotations:
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise UserError(f'references annotation without "image_id" and "caption": '
                            f"{ann!r:.80}")
        image_id = ann["image_id"]
        try:
            bucket = refs.setdefault(image_id, [])
        except TypeError:
            raise UserError(f"references image id {image_id!r:.40} is not a number or "
                            "string") from None
        if listed is not None and image_id not in listed:
            raise UserError(f'references annotation {ann.get("id")!r} has image_id '
                            f'{image_id!r} that is not in references["images"]')
        bucket.append(check_caption(ann["caption"], image_id, "reference", tokenize))
    return refs


def _predicted_captions(predictions: list, refs: dict, tokenize: bool, allow_empty: bool) -> tuple[dict, list]:
    """({image id: caption}, ids of empty predictions); every prediction must have references."""
    preds: dict = {}
    no_refs: list = []
    empty: list = []
    for p in predictions:
        if not isinstance(p, dict) or "image_id" not in p or "caption" not in p:
            raise UserError(f'prediction without "image_id" and "caption": {p!r:.80}')
        image_id = p["image_id"]
        try:
            known = image_id in refs
        except TypeError:
            raise UserError(f"prediction image id {image_id!r:.40} is not a number or "
                            "string") from None
        if image_id in preds:
            n = sum(1 for q in predictions if isinstance(q, dict) and q.get("image_id") == image_id)
            raise UserError(f"{n} predictions for image id {image_id!r}: keep exactly one "
                            "caption per image")
        if allow_empty and isinstance(p["caption"], str) and not p["caption"].strip():
            empty.append(image_id)
            caption = EMPTY_STANDIN
        else:
            caption = check_caption(p["caption"], image_id, "prediction", tokenize)
        if not known:
            no_refs.append(image_id)
        preds[image_id] = caption
    if no_refs:
        first, hint = no_refs[0], ""
        if isinstance(first, str) and first.strip().isdecimal() and int(first) in refs:
            hint = f" (references use integer ids: {int(first)} exists)"
        elif isinstance(first, int) and str(first) in refs:
            hint = f" (references use string ids: {str(first)!r} exists)"
        more = f" ({len(no_refs)} such predictions: {_few(no_refs)})" if len(no_refs) > 1 else ""
        raise UserError(f"prediction for image id {first!r} has no references{more}{hint}: "
                        "predictions and references must come from the same split")
    return preds, empty


def prepare(references: Any, predictions: Any, allow_missing: bool, tokenize: bool, allow_empty: bool = False):
    """Validate the COCO dicts; return (image ids in scoring order, refs, preds, subset,
    ids of empty predictions scored as :data:`EMPTY_STANDIN`)."""
    if not isinstance(references, dict) or not isinstance(references.get("annotations"), list):
        raise UserError('references must be COCO caption annotations: {"images": [...], '
                        '"annotations": [{"image_id", "caption", "id"}, ...]}')
    if not isinstance(predictions, list):
        raise UserError('predictions must be a COCO results list: '
                        '[{"image_id": ..., "caption": "..."}, ...]')
    if not predictions:
        raise UserError("predictions are empty: nothing to score")

    # Scoring order = order of references["images"] (what COCOEvalCap uses via getImgIds());
    # CIDEr's and ROUGE's means are float sums, so the order is part of "exactly the same".
    images = references.get("images")
    order, listed = _image_order(images) if images is not None else ([], None)
    refs = _reference_captions(references["annotations"], listed, tokenize)
    if images is None:
        order = list(refs)
    preds, empty = _predicted_captions(predictions, refs, tokenize, allow_empty)

    with_refs = [i for i in order if i in refs]
    missing = [i for i in with_refs if i not in preds]
    if missing and not allow_missing:
        raise UserError(f"{len(missing)} of {len(with_refs)} referenced images have no "
                        f"prediction ({_few(missing)}); pass --allow-missing "
                        "(allow_missing=True) to score only the predicted subset")
    ids = [i for i in with_refs if i in preds]
    return ids, refs, preds, bool(missing), empty
