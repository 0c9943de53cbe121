"""BLEU, ROUGE-L, CIDEr-D and sacreBLEU: the same numbers as pycocoevalcap, bit for bit.

Why these exist: pycocoevalcap's CIDEr-D does its arithmetic on numpy scalars and ROUGE-L
fills an O(n*m) Python table per pair; together they were the largest CPU cost after METEOR
(figures: BENCHMARKS.md, "Scoring: `eval.scoring.score` vs naive pycocoevalcap"). The
versions below perform the SAME floating-point operations in the SAME order on Python
floats (identical IEEE results), use a bit-parallel LCS (an integer, so exact), and call
numpy exactly where the originals' rounding depends on it (np.log, np.mean). BLEU's n-gram
counting is shared with CIDEr-D (integers: exact in any order) and its arithmetic stays
pycocoevalcap's own. tests/test_scoring.py checks equality against the pycocoevalcap classes.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def rouge_l(gts: dict, res: dict, keys: list) -> tuple[float, np.ndarray]:
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


def precook4(s: str) -> list:
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


def cook_refs(gts: dict, keys: list) -> list:
    """``precook4`` of every reference, per image: shared by BLEU and CIDEr-D."""
    crefs = []
    for k in keys:
        ref = gts[k]
        assert type(ref) is list and len(ref) > 0
        crefs.append([precook4(r) for r in ref])
    return crefs


class CiderRefs:
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
        # x*x (they differ in a small fraction of cases); math.pow is that same libm call.
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


def cider_d(gts: dict, res: dict, keys: list, refs: CiderRefs | None = None,
             tests: list | None = None, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """CIDEr-D exactly as pycocoevalcap.cider.Cider().compute_score(gts, res).

    The original's tf-idf vectors are never materialised: a hypothesis/reference pair only
    touches the n-grams both contain (set intersection in C); a sum of at most two terms is
    order-free ((0 + a) + b == b + a in IEEE), longer ones follow the hypothesis' order.
    ``refs`` / ``tests``: the references' and hypotheses' ``precook4`` work, when the caller
    already has it (BLEU uses the same n-gram counts).
    """
    if refs is None:
        refs = CiderRefs(cook_refs(gts, keys))
    if tests is None:
        tests = [precook4(res[k][0]) for k in keys]
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


class BleuRefs:
    """pycocoevalcap's ``cook_refs`` for every image, from the shared ``precook4`` counts.

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


def bleu(gts: dict, res: dict, keys: list, refs: BleuRefs | None = None,
          tests: list | None = None):
    """pycocoevalcap's Bleu(4).compute_score: (score, scores).

    The cooked tests are what ``cook_test(res[k][0], cook_refs(gts[k]))`` returns (testlen,
    the reference lengths for the "closest" rule, guess and clipped correct counts per n);
    ``BleuScorer.compute_score(option="closest")`` does the arithmetic, as in Bleu(4).
    """
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    if refs is None:
        refs = BleuRefs(cook_refs(gts, keys))
    if tests is None:
        tests = [precook4(res[k][0]) for k in keys]
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


def sacrebleu_score(raw_refs: list, hyps: list, cached=None):
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
