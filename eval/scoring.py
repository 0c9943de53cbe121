"""COCO caption metrics: the one implementation the toolkit uses.

    from eval.scoring import score, Scorer
    result = score(references, predictions)          # one-off: starts and stops its JVMs
    with Scorer() as scorer:                         # repeated scoring (training validation):
        for preds in each_validation_round:          # keeps the METEOR JVMs warm
            result = scorer.score(references, preds)

Numbers are exactly what pycocoevalcap's COCOEvalCap computes (0-1 scale): the same PTB
tokenizer, the same BLEU arithmetic (its integer n-gram counting shared with CIDEr-D), the
same METEOR jar, and ROUGE-L / CIDEr-D re-implemented with the same floating-point
operations in the same order (checked bit-for-bit in tests/test_scoring.py). What differs
is only how the work is scheduled:

* METEOR's JVMs start first (loading the paraphrase table is ~8-11 s, the floor of a fresh
  run), and stay warm inside a :class:`Scorer` across calls.
* References and predictions go through ONE PTBTokenizer JVM (``-ioFileList``: one lexer per
  file, so the output equals two separate COCOEvalCap calls).
* METEOR requests are pipelined (not one round trip per image) and spread over
  ``meteor_jvms`` processes; see :class:`_MeteorPool` for why the corpus score stays exact.
* BLEU, ROUGE-L, CIDEr-D and sacreBLEU run while METEOR runs (its JVMs do the work; the
  thread driving them mostly waits on pipes), at a lower CPU priority while the JVMs load,
  with Python's cyclic garbage collector paused.
* A warm Scorer keeps what depends only on the references (PTB tokens, cooked BLEU /
  CIDEr-D / sacreBLEU statistics) while they stay the same, as in training validation.

SPICE is attempted only where it can run (Stanford CoreNLP 3.6.0 jars present and Java 8);
otherwise ``metrics["SPICE"]`` is None and ``unavailable["SPICE"]`` says why.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from captioning.errors import UserError

__all__ = [
    "METRICS", "Scorer", "UserError", "format_table", "load_json", "score",
    "spice_unavailable_reason",
]

BLEU_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
METRICS = BLEU_NAMES + ("METEOR", "ROUGE_L", "CIDEr", "SPICE")
SACREBLEU_KEY = "sacreBLEU_corpus_0_100"

JAVA_INSTALL_HINT = ("install Java 8+ (Debian/Ubuntu: apt-get install default-jre-headless) "
                     "and make sure `java` is on PATH")

# PTBTokenizer (-preserveLines) starts a new output line at each of these, which would shift
# every later caption onto the wrong image in COCOEvalCap (it only replaces "\n"). A space is
# what the caption author meant.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\u2028\u2029]")


# --------------------------------------------------------------------------------------------
# small I/O helpers other modules reuse
# --------------------------------------------------------------------------------------------

def load_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning every way it can be wrong into a one-line :class:`UserError`.

    ``what`` names the file in messages. ``"references"`` must be a COCO caption annotations
    object (a dict with an ``annotations`` list) and ``"predictions"`` a COCO results list;
    any other ``what`` only has to parse.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # the read below names what is wrong
    if size > MAX_JSON_BYTES:
        raise UserError(f"{what} file {path} is {size / 2**30:.1f} GiB: files over {MAX_JSON_BYTES / 2**30:.0f} GiB "
                        "are refused (COCO's largest caption file is ~90 MB); check the file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM (Windows editors)
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} path is a directory, not a JSON file: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file {path} is not UTF-8 text (byte {e.start}): "
                        "save it as UTF-8 JSON") from None
    except OSError as e:
        raise UserError(f"cannot read {what} file {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} file {path} is not valid JSON: {e.msg} at line {e.lineno} "
                        f"column {e.colno}") from None
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



def format_table(result: dict) -> str:
    """A plain-text table of a :func:`score` result: one metric per line, n_images stated.

    Unavailable metrics show ``n/a`` with their reason; sacreBLEU (0-100 scale) is listed
    separately so nobody mistakes it for the 0-1 COCO BLEU.
    """
    metrics = result.get("metrics", {})
    unavailable = result.get("unavailable", {})
    n = result.get("n_images")
    head = f"COCO caption metrics (0-1 scale), n_images={n}"
    notes = ["PTB-tokenized" if result.get("tokenized", True) else "untokenized"]
    if result.get("scored_subset"):
        notes.append("scored subset: images without predictions skipped")
    lines = [f"{head} ({', '.join(notes)})"]
    width = max([len(k) for k in metrics] + [len("metric")])
    lines.append(f"{'metric':<{width}}  value")
    lines.append(f"{'-' * width}  ------")
    for name, value in metrics.items():
        if value is None:
            lines.append(f"{name:<{width}}  n/a    ({unavailable.get(name, 'unavailable')})")
        else:
            lines.append(f"{name:<{width}}  {value:.4f}")
    extras = result.get("extras", {})
    if SACREBLEU_KEY in extras:
        lines.append(f"sacreBLEU corpus BLEU on untokenized text (0-100 scale, not comparable "
                     f"to Bleu_4): {extras[SACREBLEU_KEY]:.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# environment: java, pycocoevalcap paths, SPICE
# --------------------------------------------------------------------------------------------

def _package_dir() -> Path:
    # pycocoevalcap has no __init__.py (a namespace package): locate it through a module.
    import pycocoevalcap.meteor.meteor as meteor_module

    return Path(meteor_module.__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def _java() -> tuple[str, int, str]:
    """(path, major version, version line) of the java on PATH; UserError if unusable."""
    java = shutil.which("java")
    if java is None:
        raise UserError("Java not found: COCO caption metrics run Stanford PTBTokenizer and "
                        f"METEOR on Java; {JAVA_INSTALL_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot run {java} -version ({e}); {JAVA_INSTALL_HINT}") from None
    text = (out.stderr or out.stdout).strip()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if out.returncode != 0 or m is None:
        first = text.splitlines()[0] if text else f"exit code {out.returncode}"
        raise UserError(f"{java} does not work ({first}); {JAVA_INSTALL_HINT}")
    major = int(m.group(1))
    if major == 1:  # "1.8.0_392" style
        major = int(m.group(2) or 0)
    if major < 8:
        raise UserError(f"Java {major} is too old for METEOR 1.5 / PTBTokenizer; "
                        f"{JAVA_INSTALL_HINT}")
    return java, major, text.splitlines()[0]


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or None if it can be attempted.

    Checked cheaply (files and the Java version), never by starting SPICE: pycocoevalcap's
    Spice() downloads Stanford CoreNLP on first use, which must not happen silently.
    """
    lib = _package_dir() / "spice" / "lib"
    missing = [j for j in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
               if not (lib / j).is_file()]
    if missing:
        return (f"needs Stanford CoreNLP 3.6.0 ({', '.join(missing)}) in {lib}; pycocoevalcap "
                "would download it (~1 GB) from nlp.stanford.edu on first use, which is not "
                "attempted here")
    try:
        _, major, _ = _java()
    except UserError as e:
        return str(e)
    if major > 8:
        return (f"SPICE 1.0 needs Java 8 and is known to fail on newer Java without extra "
                f"--add-opens flags (found Java {major})")
    return None


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def _few(ids: list, k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (f", ... ({len(ids) - k} more)" if len(ids) > k else "")


#: the largest references / predictions file read (COCO's train captions are ~90 MB)
MAX_JSON_BYTES = 2 * 2**30

#: what an empty predicted caption is scored as (with allow_empty): one token that matches no
#: reference, so every per-image score of that image is 0. pycocoevalcap cannot take an empty
#: hypothesis (ROUGE-L divides by its length; METEOR's line protocol has no empty line).
EMPTY_STANDIN = "emptycaptionzz"

#: the longest caption scored, in characters. Real captions are tens of words; the METEOR JVM
#: dies on a ~1 MB line and the tokenizer takes minutes on 50 MB, so a longer one is a broken
#: file, refused before any JVM starts.
MAX_CAPTION_CHARS = 10_000


def _check_caption(caption: Any, image_id: Any, kind: str, tokenize: bool) -> str:
    if not isinstance(caption, str):
        raise UserError(f"{kind} caption for image id {image_id!r} is "
                        f"{type(caption).__name__}, not a string")
    if len(caption) > MAX_CAPTION_CHARS:
        raise UserError(f"{kind} caption for image id {image_id!r} is {len(caption):,} characters long: captions "
                        f"over {MAX_CAPTION_CHARS:,} are refused (a real caption is a sentence); check the file")
    if not caption.strip():
        raise UserError(f"{kind} caption for image id {image_id!r} is empty or whitespace-only")
    if not tokenize and _LINE_BREAKS.search(caption):
        # Without the tokenizer nothing removes them, and METEOR's line protocol would desync.
        raise UserError(f"{kind} caption for image id {image_id!r} contains a line break; "
                        "with tokenize=False captions must be single lines")
    return caption


def _prepare(references: Any, predictions: Any, allow_missing: bool, tokenize: bool, allow_empty: bool = False):
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
    order: list = []
    listed: set = set()
    images = references.get("images")
    if images is not None:
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
    refs: dict = {}
    for ann in references["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise UserError(f'references annotation without "image_id" and "caption": '
                            f"{ann!r:.80}")
        image_id = ann["image_id"]
        try:
            bucket = refs.setdefault(image_id, [])
        except TypeError:
            raise UserError(f"references image id {image_id!r:.40} is not a number or "
                            "string") from None
        if images is not None and image_id not in listed:
            raise UserError(f'references annotation {ann.get("id")!r} has image_id '
                            f'{image_id!r} that is not in references["images"]')
        bucket.append(_check_caption(ann["caption"], image_id, "reference", tokenize))
    if images is None:
        order = list(refs)

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
            caption = _check_caption(p["caption"], image_id, "prediction", tokenize)
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

    with_refs = [i for i in order if i in refs]
    missing = [i for i in with_refs if i not in preds]
    if missing and not allow_missing:
        raise UserError(f"{len(missing)} of {len(with_refs)} referenced images have no "
                        f"prediction ({_few(missing)}); pass --allow-missing "
                        "(allow_missing=True) to score only the predicted subset")
    ids = [i for i in with_refs if i in preds]
    return ids, refs, preds, bool(missing), empty


# --------------------------------------------------------------------------------------------
# PTB tokenization: one JVM for references and predictions
# --------------------------------------------------------------------------------------------

def _ptb_tokenize(groups: list[dict]) -> list[dict]:
    """Tokenize several ``{image_id: [caption, ...]}`` dicts in ONE PTBTokenizer JVM.

    Equals ``PTBTokenizer().tokenize`` on each dict: ``-ioFileList`` runs a fresh lexer per
    input file, so no context leaks between references and predictions, and the per-line
    post-processing (lower-cased tokens minus pycocoevalcap's PUNCTUATIONS) is the same code.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    java, _, _ = _java()
    jar = _package_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    punct = set(PUNCTUATIONS)
    with tempfile.TemporaryDirectory(prefix="coco-ptb-") as tmp:
        listing, layouts = [], []
        for g, group in enumerate(groups):
            image_id = [k for k, v in group.items() for _ in range(len(v))]
            sentences = "\n".join(_LINE_BREAKS.sub(" ", c) for v in group.values() for c in v)
            Path(tmp, f"in{g}.txt").write_bytes(sentences.encode())
            listing.append(f"in{g}.txt\tout{g}.txt")
            layouts.append(image_id)
        Path(tmp, "files.txt").write_text("\n".join(listing) + "\n")
        proc = subprocess.run(
            [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", "-ioFileList", "files.txt"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): {' | '.join(tail)}")
        out = []
        for g, image_id in enumerate(layouts):
            lines = Path(tmp, f"out{g}.txt").read_bytes().decode().split("\n")
            if len(lines) < len(image_id):
                raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for "
                                   f"{len(image_id)} captions")
            tokenized: dict = {}
            for k, line in zip(image_id, lines):
                tokenized.setdefault(k, []).append(
                    " ".join([w for w in line.rstrip().split(" ") if w not in punct]))
            out.append(tokenized)
    return out


# --------------------------------------------------------------------------------------------
# ROUGE-L and CIDEr-D: exact re-implementations
# --------------------------------------------------------------------------------------------
# Why these exist: pycocoevalcap's CIDEr-D does its arithmetic on numpy scalars (~25 s for
# 25k images) and ROUGE-L fills an O(n*m) Python table per pair; together they were the
# largest CPU cost after METEOR. The versions below perform the SAME floating-point
# operations in the SAME order on Python floats (identical IEEE results), use a bit-parallel
# LCS (an integer, so exact), and call numpy exactly where the originals' rounding depends on
# it (np.log, np.mean). tests/test_scoring.py checks equality to 1e-12 (in practice bit-equal)
# against the pycocoevalcap classes.

def _rouge_l(gts: dict, res: dict, keys: list) -> tuple[float, np.ndarray]:
    """ROUGE-L exactly as pycocoevalcap.rouge.Rouge().compute_score(gts, res)."""
    beta = 1.2
    scores = []
    for k in keys:
        candidate, refs = res[k], gts[k]
        assert len(candidate) == 1 and len(refs) > 0
        token_c = candidate[0].split(" ")
        masks: dict = {}
        for i, tok in enumerate(token_c):
            masks[tok] = masks.get(tok, 0) | (1 << i)
        m = len(token_c)
        full = (1 << m) - 1
        prec, rec = [], []
        for reference in refs:
            token_r = reference.split(" ")
            # Bit-parallel LCS length (Allison-Dix / Hyyro): zeros in v count LCS length.
            v = full
            for tok in token_r:
                u = v & masks.get(tok, 0)
                v = ((v + u) | (v - u)) & full
            lcs = m - v.bit_count()
            prec.append(lcs / float(len(token_c)))
            rec.append(lcs / float(len(token_r)))
        prec_max = max(prec)
        rec_max = max(rec)
        if prec_max != 0 and rec_max != 0:
            s = ((1 + beta**2) * prec_max * rec_max) / float(rec_max + beta**2 * prec_max)
        else:
            s = 0.0
        scores.append(s)
    arr = np.array(scores)
    return np.mean(arr), arr


def _precook4(s: str) -> list:
    """CIDEr-D's n-gram counts (n = 1..4) of one sentence, plus its word count.

    Per-n dicts in first-occurrence order, the order the original sums in (it keeps one
    dict for all n but only ever combines n-grams of the same n). A plain loop beats
    Counter() on ~10-word captions.
    """
    w = s.split()
    out: list = []
    for grams in (w, zip(w, w[1:]), zip(w, w[1:], w[2:]), zip(w, w[1:], w[2:], w[3:])):
        counts: dict = {}
        for g in grams:
            counts[g] = counts.get(g, 0) + 1
        out.append(counts)
    out.append(len(w))
    return out


def _cook_refs(gts: dict, keys: list) -> list:
    """``_precook4`` of every reference, per image: shared by BLEU and CIDEr-D."""
    crefs = []
    for k in keys:
        ref = gts[k]
        assert type(ref) is list and len(ref) > 0
        crefs.append([_precook4(r) for r in ref])
    return crefs


class _CiderRefs:
    """What CIDEr-D derives from the references alone: idf weights and reference norms.

    Kept by a warm :class:`Scorer` while the references stay the same (training validation
    re-scores one validation set with new predictions), so re-scoring only cooks predictions.
    """

    def __init__(self, crefs: list):
        document_frequency: Counter = Counter()  # integer counts: the original's float sums
        for refs in crefs:
            for n in range(4):
                if len(refs) == 1:
                    document_frequency.update(refs[0][n].keys())
                else:
                    document_frequency.update(set().union(*[r[n] for r in refs]))
        ref_len = float(np.log(float(len(crefs))))
        # The original's (ref_len - np.log(max(1.0, df))) per n-gram; np.log, not math.log
        # (they can differ in the last bit). Unseen n-grams have df 0 -> log(1.0).
        logs = {c: float(np.log(max(1.0, float(c)))) for c in set(document_frequency.values())}
        self.weight = {g: ref_len - logs[c] for g, c in document_frequency.items()}
        self.unseen = ref_len - float(np.log(1.0))
        # The original squares numpy float64s with pow(x, 2): libm pow, which is not always
        # x*x (they differ in ~0.1% of cases); math.pow is that same libm call.
        self.square = {g: math.pow(w, 2.0) for g, w in self.weight.items()}
        self.unseen_square = math.pow(self.unseen, 2.0)
        self.crefs = crefs
        self.norms = [[self.norm(r, False) for r in refs] for refs in crefs]
        # sic: the original's "length" is the number of bigrams
        self.lengths = [[max(r[4] - 1, 0) for r in refs] for refs in crefs]

    def norm(self, cooked: list, hypothesis: bool) -> list:
        """sqrt of the summed squared tf-idf weights per n, summed in the original's order."""
        out = []
        length = cooked[4]
        square = self.square
        for n in range(4):
            counts = cooked[n]
            acc = 0.0
            if not hypothesis and len(counts) == length - n:
                for sq in map(square.__getitem__, counts):  # every term frequency is 1
                    acc += sq
            else:
                for g, tf in counts.items():
                    if tf == 1:
                        acc += square.get(g, self.unseen_square)
                    else:
                        acc += math.pow(float(tf) * self.weight.get(g, self.unseen), 2.0)
            out.append(math.sqrt(acc))
        return out


def _cider_d(gts: dict, res: dict, keys: list, refs: _CiderRefs | None = None,
             tests: list | None = None, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """CIDEr-D exactly as pycocoevalcap.cider.Cider().compute_score(gts, res).

    The original's tf-idf vectors are never materialised: a hypothesis/reference pair only
    touches the n-grams both contain (set intersection in C); a sum of at most two terms is
    order-free ((0 + a) + b == b + a in IEEE), longer ones follow the hypothesis' order.
    ``refs`` / ``tests``: the references' and hypotheses' ``_precook4`` work, when the caller
    already has it (BLEU uses the same n-gram counts).
    """
    if refs is None:
        refs = _CiderRefs(_cook_refs(gts, keys))
    if tests is None:
        tests = [_precook4(res[k][0]) for k in keys]
    weight = refs.weight
    penalty: dict = {}
    scores = []
    for k, test, crefs, ref_norms, ref_lengths in zip(keys, tests, refs.crefs, refs.norms,
                                                      refs.lengths):
        assert type(res[k]) is list and len(res[k]) == 1
        norm = refs.norm(test, True)
        length = max(test[4] - 1, 0)
        score = [0.0, 0.0, 0.0, 0.0]
        for ref, norm_ref, length_ref in zip(crefs, ref_norms, ref_lengths):
            delta = float(length - length_ref)
            pen = penalty.get(delta)
            if pen is None:
                pen = penalty[delta] = np.e**(-(delta**2) / (2 * sigma**2))
            for n in range(4):
                hn, rn = test[n], ref[n]
                common = hn.keys() & rn.keys()
                if not common:
                    continue  # the original adds +0.0 here: no change
                val = 0.0
                for g in (common if len(common) <= 2 else [g for g in hn if g in common]):
                    w, th, tr = weight[g], hn[g], rn[g]
                    h = w if th == 1 else float(th) * w
                    r = w if tr == 1 else float(tr) * w
                    val += (h if h < r else r) * r
                if norm[n] != 0 and norm_ref[n] != 0:
                    val /= norm[n] * norm_ref[n]
                val *= pen
                score[n] += val
        score_avg = np.mean(np.array(score))
        score_avg /= len(crefs)
        score_avg *= 10.0
        scores.append(score_avg)
    arr = np.array(scores)
    return np.mean(arr), arr


class _BleuRefs:
    """pycocoevalcap's ``cook_refs`` for every image, from the shared ``_precook4`` counts.

    cook_refs keeps each reference's length and, per n-gram, the largest count in any one
    reference; cook_test then clips the hypothesis' counts by those. All of it is integer
    counting (exact in any order), so it is done here once for BLEU and CIDEr-D; the
    floating-point part stays pycocoevalcap's own ``BleuScorer.compute_score``.
    """

    def __init__(self, crefs: list):
        self.reflens = [[r[4] for r in refs] for refs in crefs]
        self.maxcounts = []
        for refs in crefs:
            per_n = []
            for n in range(4):
                if len(refs) == 1:
                    per_n.append(refs[0][n])
                    continue
                best: dict = {}
                get = best.get
                for r in refs:
                    for g, c in r[n].items():
                        if get(g, 0) < c:
                            best[g] = c
                per_n.append(best)
            self.maxcounts.append(per_n)


def _bleu(gts: dict, res: dict, keys: list, refs: _BleuRefs | None = None,
          tests: list | None = None):
    """pycocoevalcap's Bleu(4).compute_score: (score, scores).

    The cooked tests are what ``cook_test(res[k][0], cook_refs(gts[k]))`` returns (testlen,
    the reference lengths for the "closest" rule, guess and clipped correct counts per n);
    ``BleuScorer.compute_score(option="closest")`` does the arithmetic, as in Bleu(4).
    """
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    if refs is None:
        refs = _BleuRefs(_cook_refs(gts, keys))
    if tests is None:
        tests = [_precook4(res[k][0]) for k in keys]
    ctest = []
    for test, reflen, maxcounts in zip(tests, refs.reflens, refs.maxcounts):
        testlen = test[4]
        correct = []
        for n in range(4):
            get = maxcounts[n].get
            clipped = 0
            for g, c in test[n].items():
                m = get(g, 0)
                clipped += c if c < m else m
            correct.append(clipped)
        ctest.append({"reflen": reflen, "testlen": testlen, "correct": correct,
                      "guess": [max(0, testlen - k + 1) for k in range(1, 5)]})
    scorer = BleuScorer(n=4)
    scorer.crefs = refs.reflens  # compute_score only needs its length
    scorer.ctest = ctest
    return scorer.compute_score(option="closest", verbose=0)


def _sacrebleu(raw_refs: list, hyps: list, cached=None):
    """sacrebleu corpus BLEU (0-100) on untokenized text; returns (score, signature, bleu).

    The returned BLEU object holds the references' n-grams (sacrebleu's own reference
    cache) so a warm Scorer re-scoring the same references only processes predictions.
    """
    import logging

    import sacrebleu

    if cached is None:
        width = max(len(r) for r in raw_refs)
        # sacrebleu takes reference "streams"; None marks a missing reference for images
        # with fewer references than the maximum.
        streams = [[r[j] if j < len(r) else None for r in raw_refs] for j in range(width)]
        cached = sacrebleu.metrics.BLEU(references=streams)
    log = logging.getLogger("sacrebleu")
    level = log.level
    log.setLevel(logging.ERROR)  # its "forgot to detokenize?" hint: COCO text ends in " ."
    try:
        result = cached.corpus_score(hyps, None)
    finally:
        log.setLevel(level)
    return float(result.score), str(cached.get_signature()), cached


# Heap settings for the METEOR JVM (pycocoevalcap's -Xmx2G stays). Loading the paraphrase
# table keeps ~350 MB live out of ~3 GB allocated: G1's default small young generation
# copies that live data ~19 times; a 1.2 GB young generation under the throughput collector
# does it ~4 times. Measured on 2 cores: load ~1 s sooner and ~10% fewer CPU-s (load + 5k
# images), at ~1.4 GB resident instead of ~1.1. Limiting the JIT to C1 (tried before) made
# the load ~4 s slower and warm re-scores 2x slower. GC and JIT settings cannot change
# results (Java floating point is strict; tests compare with COCOEvalCap).
_METEOR_JVM_FLAGS = ["-XX:+UseParallelGC", "-Xmn1200m", "-Xms2G"]


class _MeteorJVM:
    """One ``meteor-1.5.jar -stdio`` process: pycocoevalcap's command plus a JIT flag."""

    def __init__(self):
        java, _, _ = _java()
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [java, *_METEOR_JVM_FLAGS, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l",
             "en", "-norm"],
            cwd=_package_dir() / "meteor", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, bufsize=0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:  # Linux: 1 MiB pipes, so neither side stalls (and wakes the other) per 64 KiB
                import fcntl

                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            except (ImportError, AttributeError, OSError):
                pass
        self.lock = threading.Lock()  # one request at a time: answers come back in order
        self.ready = threading.Event()
        self.error: BaseException | None = None
        # The jar reads stdin only once its paraphrase table is loaded (~8 s of one core):
        # a tiny request answered means "loaded", so work goes only to JVMs that can take it
        # now instead of queueing behind a load.
        threading.Thread(target=self._probe, daemon=True, name="meteor-probe").start()

    def _probe(self) -> None:
        try:
            self.request(b"SCORE ||| a ||| a\n", 1)
            self.ready.set()
        except BaseException as e:  # reported by the pool when it needs this JVM
            self.error = e

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "no output on stderr"
        except (OSError, ValueError):
            return "stderr unavailable"

    def request(self, payload: bytes, n_lines: int) -> list[str]:
        """Send ``payload`` and return the next ``n_lines`` lines of output.

        Writing all lines at once (from a helper thread, so a full pipe cannot deadlock)
        instead of one round trip per image is what pycocoevalcap's Meteor does not do;
        reading in large chunks needs the GIL once per chunk rather than once per line.
        """
        with self.lock:
            return self._request(payload, n_lines)

    def _request(self, payload: bytes, n_lines: int) -> list[str]:
        failure: list = []

        def write():
            view = memoryview(payload)
            try:
                while view:
                    view = view[self.proc.stdin.write(view):]
            except (BrokenPipeError, OSError, ValueError) as e:
                failure.append(e)

        writer = threading.Thread(target=write, daemon=True, name="meteor-writer")
        writer.start()
        fd = self.proc.stdout.fileno()
        chunks, count = [], 0
        while count < n_lines:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                writer.join()
                raise RuntimeError(f"METEOR JVM exited (code {self.proc.poll()}): "
                                   f"{self._stderr_tail()}")
            chunks.append(chunk)
            count += chunk.count(b"\n")
            if count < n_lines and len(chunk) < 1 << 15:
                # The jar flushes every line. Waking up for each one costs a GIL hand-over
                # (up to 5 ms while the caller's thread computes the other metrics): let
                # answers pile up instead.
                time.sleep(0.01)
        writer.join()
        if failure:
            raise RuntimeError(f"writing to METEOR failed: {failure[0]}")
        lines = b"".join(chunks).decode().split("\n")
        if count != n_lines or lines[-1]:
            raise RuntimeError(f"METEOR protocol out of sync: expected {n_lines} lines, "
                               f"got {count}")
        return lines[:n_lines]

    def close(self) -> None:
        """Stop the JVM now: it holds no state worth flushing, and an orderly JVM shutdown
        (SIGTERM) took ~0.8 s, the whole tail of a one-shot score()."""
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, self._stderr):
            try:
                f.close()
            except (OSError, AttributeError):
                pass


class _MeteorPool:
    """METEOR over ``n`` JVMs with results identical to pycocoevalcap's Meteor.

    pycocoevalcap sends one ``SCORE`` line per image (the JVM answers with that image's
    statistics) and then one ``EVAL`` line with all statistics: the JVM prints each image's
    score and finally the corpus score, computed from the field-wise SUM of the statistics
    (MeteorStats.addStats). Here:

    * ``SCORE`` lines may go to any JVM: an image's statistics depend only on its line.
    * per-image scores come from ``EVAL`` over the distinct statistics strings, spread over
      the JVMs (the jar parses each with java.util.Scanner, ~0.25 ms a line, which was the
      slowest single step after loading).
    * every statistic is an integer count (lengths, matches per stage, chunks), so the sum
      is exact in any order. It is summed here with addStats' rule (see :meth:`_sum_stats`)
      and sent as one ``EVAL`` whose corpus line is the same computeMetrics() on the same
      numbers. If a line ever has another shape or a non-integer, the full ``EVAL`` is sent
      instead, exactly as pycocoevalcap does.
    """

    def __init__(self, n: int | None):
        self.n = n
        self.jvms: list[_MeteorJVM] = []

    def loaded(self) -> bool:
        """True once every JVM has finished loading (or failed to)."""
        return all(j.ready.is_set() or j.error is not None or not j.alive() for j in self.jvms)

    def start(self) -> None:
        """Start missing or dead JVMs (non-blocking: they load in the background)."""
        for jvm in [j for j in self.jvms if not j.alive()]:
            jvm.close()
            self.jvms.remove(jvm)
        while len(self.jvms) < (self.n or 1):
            self.jvms.append(_MeteorJVM())

    def _map(self, items: list[str], build, lines_per_item, extra: int = 0) -> list[str]:
        """Send ``items`` in chunks to whichever loaded JVM is free; results in input order."""
        if not items:
            return []
        # Small chunks let a JVM that finishes loading late still take a share, and bound
        # the wait for the last chunk; each request costs well under a millisecond.
        size = max(50, min(2000, len(items) // (8 * len(self.jvms)) + 1))
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for start in range(0, len(items), size):
            # Built here, not in the JVM threads: the caller's thread holds the GIL while it
            # computes the other metrics, and each GIL hand-over can wait 5 ms.
            todo.put((start, build(items[start:start + size])))
        results: list = [None] * len(items)
        errors: list = []

        def work(jvm: _MeteorJVM):
            # Wait for this JVM to finish loading, unless the others take all the work first.
            while not jvm.ready.wait(0.05):
                if jvm.error is not None or todo.empty() or errors:
                    return
            while not errors:
                try:
                    start, payload = todo.get_nowait()
                except queue.Empty:
                    return
                n_items = min(size, len(items) - start)
                try:
                    out = jvm.request(payload, lines_per_item * n_items + extra)
                except BaseException as e:  # surfaced below
                    errors.append(e)
                    return
                results[start:start + n_items] = out[:n_items]

        threads = [threading.Thread(target=work, args=(j,), daemon=True, name="meteor")
                   for j in self.jvms]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if not todo.empty():  # every JVM failed while loading
            failed = [j.error for j in self.jvms if j.error is not None]
            raise RuntimeError(f"METEOR could not start: {failed[0] if failed else 'unknown'}")
        return results

    def compute(self, gts: dict, res: dict, keys: list) -> tuple[float, list[float]]:
        """(corpus METEOR, per-image METEOR) exactly as Meteor().compute_score(gts, res)."""
        if not self.jvms:
            self.start()
        lines = []
        for k in keys:
            assert len(res[k]) == 1
            hypothesis = res[k][0].replace("|||", "").replace("  ", " ")
            lines.append(" ||| ".join(("SCORE", " ||| ".join(gts[k]), hypothesis)))
        stats = [s.strip() for s in self._map(
            lines, lambda chunk: "".join(f"{line}\n" for line in chunk).encode(), 1)]

        distinct = list(dict.fromkeys(stats))
        seg = self._map(distinct,
                        lambda chunk: ("EVAL ||| " + " ||| ".join(chunk) + "\n").encode(), 1, 1)
        score_of = {s: float(v.strip()) for s, v in zip(distinct, seg)}
        per_image = [score_of[s] for s in stats]

        total = self._sum_stats(stats)
        jvm = next(j for j in self.jvms if j.ready.is_set())
        if total is not None:
            # The first answer is computeMetrics(total), what pycocoevalcap's final line is.
            corpus = jvm.request(f"EVAL ||| {total}\n".encode(), 2)[0]
        else:
            eval_line = "EVAL ||| " + " ||| ".join(stats) + "\n"
            corpus = jvm.request(eval_line.encode(), len(stats) + 1)[-1]
        return float(corpus.strip()), per_image

    @staticmethod
    def _sum_stats(stats: list[str]) -> str | None:
        """MeteorStats.addStats over all lines, or None when it cannot be done exactly here.

        Fields: test/ref length, test/ref function words, 4 stages x (test content, ref
        content, test function, ref function) matches, chunks, test/ref word matches. Like
        addStats, chunks are not added for a segment that matches perfectly (all words of
        both sides matched in one chunk).
        """
        sums = [0] * 23
        for s in stats:
            fields = s.split()
            if len(fields) != 23:
                return None
            values = []
            for f in fields:
                x = float(f)
                if not x.is_integer() or abs(x) >= 2**52:
                    return None
                values.append(int(x))
            test_matches = sum(values[4 + 4 * i] + values[6 + 4 * i] for i in range(4))
            ref_matches = sum(values[5 + 4 * i] + values[7 + 4 * i] for i in range(4))
            perfect = (test_matches == values[0] and ref_matches == values[1]
                       and values[20] == 1)
            for i, v in enumerate(values):
                if i != 20 or not perfect:
                    sums[i] += v
        # Plain decimals ("123.0"), which java.util.Scanner.nextDouble reads back exactly.
        return " ".join(f"{x}.0" for x in sums)

    def close(self) -> None:
        for jvm in self.jvms:
            jvm.close()
        self.jvms = []


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def _lower_thread_priority(nice: int = 10) -> None:
    """Give the calling thread (only it: Linux threads have their own nice value) a lower CPU
    priority, so the METEOR JVMs get the cores first. No-op elsewhere."""
    if sys.platform != "linux":  # elsewhere the id is not a thread's, so never guess
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off while scoring runs.

    Scoring builds millions of small tuples and dicts (n-grams, counts) that never form
    cycles, so reference counting frees them anyway; but every few thousand allocations the
    collector walks them all again. At 25k images that was ~30% of the Python metrics' time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_LIVE: weakref.WeakSet[Scorer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scorer in list(_LIVE):
        scorer.close()


def _idle_cores(window: float = 0.2) -> float | None:
    """Cores left idle by everything else running, sampled from /proc/stat (None: unknown)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return values[3] + values[4], sum(values)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError):
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(total1 - total0, 1)


def _auto_jvms(idle_needed: float) -> int:
    """2 METEOR JVMs when at least ``idle_needed`` cores sit idle right now, else 1.

    A second JVM splits METEOR's per-image work, but costs ~1.4 GB, ~10 CPU-s to load and
    its own JIT warm-up: worth it only with cores to spare. On a busy machine (a training
    run, other jobs) it would slow everything else down instead.
    """
    if (os.cpu_count() or 1) < 2:
        return 1
    idle = _idle_cores()
    if idle is None:  # no /proc/stat: fall back to the load average
        try:
            idle = (os.cpu_count() or 1) - os.getloadavg()[0]
        except (AttributeError, OSError):
            idle = 1.0
    return 2 if idle >= idle_needed else 1


# One-shot score(): a JVM keeps ~1.3 cores busy (its GC and JIT threads included) and the
# Python metrics one more, so a second JVM only pays when three cores are idle, and only for
# large sets: a cold JVM scores ~1,000 images/s, so below ~10k the second one would barely
# have loaded by the time the first is done. Measured on 2 cores at 25k images: one JVM
# finished sooner than two, which starved the Python metrics.
_SECOND_JVM_MIN_IMAGES = 10_000
_SECOND_JVM_IDLE_ONE_SHOT = 3.0
# A warm Scorer loads its JVMs once and re-scores many times (training validation): a second
# JVM pays for itself with one idle core.
_SECOND_JVM_IDLE_WARM = 0.75


class Scorer:
    """Scores predictions against references; keeps METEOR's JVMs warm between calls.

    Use as a context manager (or call :meth:`close`): each METEOR JVM holds ~1.4 GB.
    ``meteor_jvms`` spreads METEOR over that many processes (default: 2 if a core is idle
    when METEOR first starts, else 1; a one-shot :func:`score` uses 2 only from 10k images
    with 3 idle cores).
    ``prestart=True`` starts loading METEOR now, e.g. while a model trains before its first
    validation. ``cache_references`` keeps what depends only on the references (their PTB
    tokens, cooked BLEU/CIDEr-D/sacreBLEU statistics) while they stay the same, so
    re-scoring a fixed validation set only processes the new predictions. Calls on one
    Scorer are serialized; results equal :func:`score`'s.
    """

    def __init__(self, *, meteor_jvms: int | None = None, prestart: bool = False,
                 cache_references: bool = True, _one_shot: bool = False):
        if meteor_jvms is not None and int(meteor_jvms) < 1:
            raise UserError(f"meteor_jvms must be >= 1, got {meteor_jvms}")
        # None: decided when METEOR first starts (see _auto_jvms), then kept.
        self._meteor = _MeteorPool(int(meteor_jvms) if meteor_jvms is not None else None)
        self._one_shot = _one_shot
        self._lock = threading.Lock()
        self.cache_references = cache_references
        self._cache_key: tuple | None = None
        self._cache: dict = {}
        _LIVE.add(self)
        if prestart:
            _java()
            self._start_meteor(None)

    @property
    def meteor_jvms(self) -> int | None:
        """How many METEOR JVMs this Scorer runs (None until METEOR first starts)."""
        return self._meteor.n

    def _start_meteor(self, n_images: int | None) -> None:
        if self._meteor.n is None:
            if not self._one_shot:
                self._meteor.n = _auto_jvms(_SECOND_JVM_IDLE_WARM)
            elif (n_images or 0) < _SECOND_JVM_MIN_IMAGES:
                self._meteor.n = 1
            else:
                self._meteor.n = _auto_jvms(_SECOND_JVM_IDLE_ONE_SHOT)
        self._meteor.start()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def close(self) -> None:
        """Stop the JVMs and drop caches (idempotent). A later call restarts the JVMs."""
        meteor = getattr(self, "_meteor", None)
        if meteor is not None:
            meteor.close()
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the cached reference-side work (the JVMs stay warm)."""
        self._cache_key, self._cache = None, {}

    def score(self, references: dict, predictions: list, *, tokenize: bool = True,
              metrics: Iterable[str] | None = None, allow_missing: bool = False, allow_empty: bool = False) -> dict:
        """Like :func:`score`, reusing this Scorer's warm METEOR JVMs."""
        with self._lock, _gc_paused():
            try:
                return self._score(references, predictions, tokenize=tokenize,
                                   metrics=metrics, allow_missing=allow_missing, allow_empty=allow_empty)
            except UserError:
                raise
            except BaseException:
                # A request may have been cut off midway (error, Ctrl-C): never reuse JVMs
                # whose next output line could belong to the old request.
                self._meteor.close()
                raise

    def _references_cache(self, tokenize: bool, ids: list, refs: dict) -> dict:
        if not self.cache_references:
            return {}
        key = (tokenize, tuple(ids), tuple(tuple(refs[k]) for k in ids))
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        return self._cache

    def _score(self, references, predictions, *, tokenize, metrics, allow_missing, allow_empty=False) -> dict:
        want = _resolve_metrics(metrics)
        ids, refs, preds, subset, empty = _prepare(references, predictions, allow_missing, tokenize, allow_empty)
        if tokenize or "METEOR" in want:
            _java()
        if "METEOR" in want:
            self._start_meteor(len(ids))  # loads while we tokenize
        cache = self._references_cache(tokenize, ids, refs)

        res_raw = {k: [preds[k]] for k in ids}
        if not tokenize:
            gts, res = {k: refs[k] for k in ids}, res_raw
        elif "gts" in cache:
            gts, (res,) = cache["gts"], _ptb_tokenize([res_raw])
        else:
            gts, res = _ptb_tokenize([{k: refs[k] for k in ids}, res_raw])
            cache["gts"] = gts

        # METEOR runs in the JVMs, driven by a thread that mostly waits on pipes; meanwhile
        # the pure-Python metrics run step by step. While the JVMs load (~8 s, the longest
        # chain of a fresh run, and nothing else METEOR needs can start before it ends) the
        # steps run in a worker thread at a lower CPU priority so the load is never starved;
        # once they are loaded, the rest runs here at normal priority and shares the cores
        # fairly with METEOR's per-image work.
        steps = self._python_metrics(want, gts, res, ids, refs, preds, cache)
        meteor: dict = {}
        python: dict = {}

        def advance(until=None) -> None:
            try:
                while until is None or not until():
                    next(steps)
            except StopIteration as stop:
                python["values"] = stop.value
            except BaseException as e:  # re-raised below
                python["error"] = e

        if "METEOR" not in want:
            advance()
        else:
            def run_meteor():
                try:
                    meteor["METEOR"] = self._meteor.compute(gts, res, ids)
                except BaseException as e:  # re-raised below
                    meteor["error"] = e

            def run_low():
                _lower_thread_priority()
                advance(until=self._meteor.loaded)

            driver = threading.Thread(target=run_meteor, daemon=True, name="meteor-driver")
            driver.start()
            if not self._meteor.loaded():
                low = threading.Thread(target=run_low, daemon=True, name="coco-metrics")
                low.start()
                low.join()
            if not python:
                advance()
            driver.join()
        for failed in (python, meteor):
            if "error" in failed:
                raise failed["error"]
        values = python["values"]
        values.update(meteor)

        unavailable: dict = {}
        if "SPICE" in want:
            reason = spice_unavailable_reason()
            if reason is None:
                try:
                    values["SPICE"] = _spice(gts, res, ids)
                except Exception as e:  # reported, never silently dropped
                    unavailable["SPICE"] = f"SPICE failed: {type(e).__name__}: {e}"
            else:
                unavailable["SPICE"] = reason

        per_image: dict = {k: {} for k in ids}
        out_metrics: dict = {}
        for name in METRICS:
            if name not in want:
                continue
            if name in values:
                corpus, scores = values[name]
                out_metrics[name] = float(corpus)
                for k, s in zip(ids, scores):
                    per_image[k][name] = float(s)
            else:
                out_metrics[name] = None
        sacre, signature = values["_sacrebleu"]
        return {
            "metrics": out_metrics,
            "unavailable": unavailable,
            "extras": {SACREBLEU_KEY: sacre, "sacreBLEU_signature": signature},
            "per_image": per_image,
            "n_images": len(ids),
            "tokenized": bool(tokenize),
            "scored_subset": subset,
            "empty_captions": empty,
        }

    @staticmethod
    def _python_metrics(want, gts, res, ids, refs, preds, cache):
        """Generator: yields between steps (see _score), returns {name: (score, scores)}."""
        values: dict = {}
        if want & {*BLEU_NAMES, "CIDEr"}:
            if "crefs" not in cache:
                cache["crefs"] = _cook_refs(gts, ids)
                yield
            tests = [_precook4(res[k][0]) for k in ids]
            yield
        if want & set(BLEU_NAMES):
            if "bleu" not in cache:
                cache["bleu"] = _BleuRefs(cache["crefs"])
                yield
            score, scores = _bleu(gts, res, ids, cache["bleu"], tests)
            for name, sc, scs in zip(BLEU_NAMES, score, scores):
                values[name] = (sc, scs)
            yield
        if "ROUGE_L" in want:
            values["ROUGE_L"] = _rouge_l(gts, res, ids)
            yield
        if "CIDEr" in want:
            if "cider" not in cache:
                cache["cider"] = _CiderRefs(cache["crefs"])
                yield
            values["CIDEr"] = _cider_d(gts, res, ids, cache["cider"], tests)
            yield
        sacre, signature, cache["sacrebleu"] = _sacrebleu(
            [refs[k] for k in ids], [preds[k] for k in ids], cache.get("sacrebleu"))
        values["_sacrebleu"] = (sacre, signature)
        return values


def _resolve_metrics(metrics: Iterable[str] | None) -> set:
    if metrics is None:
        return set(METRICS)
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    want = set()
    for m in metrics:
        m = m.strip()
        if m in ("Bleu", "BLEU"):
            want |= set(BLEU_NAMES)
        elif m in METRICS:
            want.add(m)
        else:
            raise UserError(f"unknown metric {m!r}: choose from {', '.join(METRICS)} "
                            "(or Bleu for all four)")
    if not want:
        raise UserError("no metrics selected")
    return want


def _spice(gts: dict, res: dict, keys: list) -> tuple[float, list[float]]:
    from pycocoevalcap.spice.spice import Spice

    sub_g = {k: gts[k] for k in keys}
    sub_r = {k: res[k] for k in keys}
    corpus, scores = Spice().compute_score(sub_g, sub_r)
    order = sorted(keys)  # Spice returns scores in sorted-id order
    by_id = {k: s["All"]["f"] for k, s in zip(order, scores)}
    return float(corpus), [float(by_id[k]) for k in keys]


def score(references: dict, predictions: list, *, tokenize: bool = True,
          metrics: Iterable[str] | None = None, allow_missing: bool = False, allow_empty: bool = False,
          scorer: Scorer | None = None) -> dict:
    """COCO caption metrics of ``predictions`` against ``references``.

    ``references``: COCO caption annotations ``{"images": [{"id"}], "annotations":
    [{"image_id", "caption", "id"}]}``; ``predictions``: ``[{"image_id", "caption"}]``, one
    per image. ``tokenize=False`` skips the PTB tokenizer and scores the strings as given.
    ``metrics`` limits the metrics (names from :data:`METRICS`, or "Bleu").
    ``allow_missing=True`` scores only the images that have a prediction (CIDEr-D's idf then
    comes from that subset, so numbers are not comparable with full-set ones).
    ``allow_empty=True`` scores an empty predicted caption (a model that stopped at once) as
    :data:`EMPTY_STANDIN`, a caption matching nothing: all its per-image scores are 0, and the
    result lists such images under ``empty_captions``; otherwise an empty caption is refused.
    ``scorer``: a warm :class:`Scorer` to reuse (otherwise one is started and closed here).

    Returns ``{"metrics": {name: float | None}, "unavailable": {name: reason}, "extras":
    {"sacreBLEU_corpus_0_100", "sacreBLEU_signature"}, "per_image": {image_id: {name:
    float}}, "n_images", "tokenized", "scored_subset"}``; values as COCOEvalCap computes them.
    Raises :class:`UserError` for inputs that cannot be scored.
    """
    if scorer is not None:
        return scorer.score(references, predictions, tokenize=tokenize, metrics=metrics,
                            allow_missing=allow_missing, allow_empty=allow_empty)
    # Nothing cached: what a one-shot run builds is freed as it goes, before the garbage
    # collector is back on (a cache alive then costs a full traversal: ~1.5 s at 25k).
    with Scorer(_one_shot=True, cache_references=False) as fresh:
        return fresh.score(references, predictions, tokenize=tokenize, metrics=metrics,
                           allow_missing=allow_missing, allow_empty=allow_empty)
