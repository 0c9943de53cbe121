"""The scorer: runs the metrics over validated inputs and assembles the result dict."""

from __future__ import annotations

import atexit
import contextlib
import gc
import threading
import weakref
from collections.abc import Iterable

from captioning.errors import UserError
from captioning.vocabulary import BLEU_NAMES, COCO_METRICS
from eval.scoring.inputs import EMPTY_STANDIN, SACREBLEU_KEY, prepare, resolve_metrics
from eval.scoring.java import java, spice, spice_unavailable_reason
from eval.scoring.meteor import MeteorPool
from eval.scoring.ngram import BleuRefs, CiderRefs, bleu, cider_d, cook_refs, precook4, rouge_l, sacrebleu_score
from eval.scoring.ptb import ptb_tokenize

__all__ = ["EMPTY_STANDIN", "Scorer", "format_table", "score"]

_LIVE: weakref.WeakSet[Scorer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scorer in list(_LIVE):
        scorer.close()


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off while scoring runs.

    Scoring builds millions of small tuples and dicts (n-grams, counts) that never form
    cycles, so reference counting frees them anyway; but every few thousand allocations the
    collector would walk them all again, a cost that grows with the data set on any machine.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Scorer:
    """Scores predictions against references; keeps METEOR's JVMs warm between calls.

    Use as a context manager (or call :meth:`close`): each METEOR JVM holds over a GB.
    ``meteor_jvms`` spreads METEOR over that many processes (default 1: a second JVM costs
    its own load and memory, and pays only where cores sit idle, which the caller knows).
    ``prestart=True`` starts loading METEOR now, e.g. while a model trains before its first
    validation. ``cache_references`` keeps what depends only on the references (their PTB
    tokens, cooked BLEU/CIDEr-D/sacreBLEU statistics) while they stay the same, so
    re-scoring a fixed validation set only processes the new predictions. Calls on one
    Scorer are serialized; results equal :func:`score`'s.
    """

    def __init__(self, *, meteor_jvms: int | None = None, prestart: bool = False,
                 cache_references: bool = True):
        if meteor_jvms is not None and int(meteor_jvms) < 1:
            raise UserError(f"meteor_jvms must be >= 1, got {meteor_jvms}")
        self._meteor = MeteorPool(int(meteor_jvms) if meteor_jvms is not None else 1)
        self._lock = threading.Lock()
        self.cache_references = cache_references
        self._cache_key: tuple | None = None
        self._cache: dict = {}
        _LIVE.add(self)
        if prestart:
            java()
            self._meteor.start()

    @property
    def meteor_jvms(self) -> int:
        """How many METEOR JVMs this Scorer runs."""
        return self._meteor.n

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

    def _score(self, references, predictions, *, tokenize, metrics, allow_missing, allow_empty) -> dict:
        want = resolve_metrics(metrics)
        ids, refs, preds, subset, empty = prepare(references, predictions, allow_missing, tokenize, allow_empty)
        if tokenize or "METEOR" in want:
            java()
        if "METEOR" in want:
            self._meteor.start()  # loads while we tokenize
        cache = self._references_cache(tokenize, ids, refs)

        res_raw = {k: [preds[k]] for k in ids}
        if not tokenize:
            gts, res = {k: refs[k] for k in ids}, res_raw
        elif "gts" in cache:
            gts, (res,) = cache["gts"], ptb_tokenize([res_raw])
        else:
            gts, res = ptb_tokenize([{k: refs[k] for k in ids}, res_raw])
            cache["gts"] = gts

        # METEOR runs in the JVMs, driven by a thread that mostly waits on pipes; meanwhile
        # the pure-Python metrics run here.
        meteor: dict = {}
        driver = None
        if "METEOR" in want:
            def run_meteor():
                try:
                    meteor["METEOR"] = self._meteor.compute(gts, res, ids)
                except BaseException as e:  # re-raised below
                    meteor["error"] = e

            driver = threading.Thread(target=run_meteor, daemon=True, name="meteor-driver")
            driver.start()
        try:
            values = self._python_metrics(want, gts, res, ids, refs, preds, cache)
        finally:
            if driver is not None:
                driver.join()
        if "error" in meteor:
            raise meteor["error"]
        values.update(meteor)

        unavailable: dict = {}
        if "SPICE" in want:
            reason = spice_unavailable_reason()
            if reason is None:
                try:
                    values["SPICE"] = spice(gts, res, ids)
                except Exception as e:  # reported, never silently dropped
                    unavailable["SPICE"] = f"SPICE failed: {type(e).__name__}: {e}"
            else:
                unavailable["SPICE"] = reason

        per_image: dict = {k: {} for k in ids}
        out_metrics: dict = {}
        for name in COCO_METRICS:
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
    def _python_metrics(want, gts, res, ids, refs, preds, cache) -> dict:
        """{name: (score, scores)} of BLEU, ROUGE-L, CIDEr-D and sacreBLEU (``_sacrebleu``)."""
        values: dict = {}
        if want & {*BLEU_NAMES, "CIDEr"}:
            if "crefs" not in cache:
                cache["crefs"] = cook_refs(gts, ids)
            tests = [precook4(res[k][0]) for k in ids]
        if want & set(BLEU_NAMES):
            if "bleu" not in cache:
                cache["bleu"] = BleuRefs(cache["crefs"])
            corpus, scores = bleu(gts, res, ids, cache["bleu"], tests)
            for name, sc, scs in zip(BLEU_NAMES, corpus, scores):
                values[name] = (sc, scs)
        if "ROUGE_L" in want:
            values["ROUGE_L"] = rouge_l(gts, res, ids)
        if "CIDEr" in want:
            if "cider" not in cache:
                cache["cider"] = CiderRefs(cache["crefs"])
            values["CIDEr"] = cider_d(gts, res, ids, cache["cider"], tests)
        sacre, signature, cache["sacrebleu"] = sacrebleu_score(
            [refs[k] for k in ids], [preds[k] for k in ids], cache.get("sacrebleu"))
        values["_sacrebleu"] = (sacre, signature)
        return values


def score(references: dict, predictions: list, *, tokenize: bool = True,
          metrics: Iterable[str] | None = None, allow_missing: bool = False, allow_empty: bool = False,
          scorer: Scorer | None = None) -> dict:
    """COCO caption metrics of ``predictions`` against ``references``.

    ``references``: COCO caption annotations ``{"images": [{"id"}], "annotations":
    [{"image_id", "caption", "id"}]}``; ``predictions``: ``[{"image_id", "caption"}]``, one
    per image. ``tokenize=False`` skips the PTB tokenizer and scores the strings as given.
    ``metrics`` limits the metrics (names from :data:`~captioning.vocabulary.COCO_METRICS`, or "Bleu").
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
    # Nothing cached: a one-shot run frees what it builds as it goes.
    with Scorer(cache_references=False) as fresh:
        return fresh.score(references, predictions, tokenize=tokenize, metrics=metrics,
                           allow_missing=allow_missing, allow_empty=allow_empty)


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
