"""eval.scoring equals pycocoevalcap's COCOEvalCap, validates its inputs, and cleans up.

Java-backed tests share one warm Scorer and one COCOEvalCap reference run (each METEOR JVM
costs ~10 s to start); everything else is pure Python.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from captioning import files
from captioning.errors import UserError
from captioning.files import write_json
from eval import scoring
from eval.scoring import inputs, ngram, ptb

REPO = Path(__file__).resolve().parents[1]
ALL = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (METEOR, PTB)")

_WORDS = ("a an the man woman dog dogs cat bus street table pizza red blue two three is are "
          "sitting standing riding on in of with next to near large small white black young "
          "people group man's it's Zürich café naïve señor 東京 crème brûlée São-Paulo 2 10 "
          "3.5 1990s x-ray T-shirt").split()
_PUNCT = [",", ".", "!", "?", ";", ":", "-", "--", "...", "(", ")", '"', "'"]


def _caption(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(3, 14)):
        w = rng.choice(_WORDS)
        if rng.random() < 0.15:
            w = w.upper() if rng.random() < 0.3 else w.capitalize()
        words.append(w)
        if rng.random() < 0.1:
            words.append(rng.choice(_PUNCT))
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:] + rng.choice([".", " .", "!", ""])
    return text


def make_data(n_images: int = 200, seed: int = 0, single_line: bool = False):
    """COCO dicts with punctuation, casing, digits, non-ASCII and a few awkward captions."""
    rng = random.Random(seed)
    images, anns, preds = [], [], []
    for i in range(n_images):
        image_id = 1000 + 3 * i
        images.append({"id": image_id, "file_name": f"{image_id}.jpg"})
        refs = [_caption(rng) for _ in range(rng.choice([4, 5, 5, 6]))]
        for r in refs:
            anns.append({"image_id": image_id, "id": len(anns), "caption": r})
        pred = _caption(rng)
        if i % 10 == 0:
            pred = refs[0]  # a perfect METEOR match: addStats treats its chunks specially
        elif i == 3:
            pred = "a man ||| riding a bus"  # METEOR's field separator inside a caption
        elif i == 5:
            pred = "A dog\non a table"  # COCOEvalCap replaces newlines before tokenizing
        elif i == 7:
            pred = "!!!"  # tokenizes to nothing
        if single_line:
            pred = pred.replace("\n", " ")
        preds.append({"image_id": image_id, "caption": pred})
    return {"images": images, "annotations": anns}, preds


class _CocoLike:
    """The two attributes COCOEvalCap reads from a pycocotools COCO object."""

    def __init__(self, anns: list, image_ids: list):
        self._ids = image_ids
        self.imgToAnns = {i: [] for i in image_ids}
        for a in anns:
            self.imgToAnns[a["image_id"]].append(a)

    def getImgIds(self):
        return list(self._ids)


def _cocoevalcap(refs: dict, preds: list, meteor, tokenize: bool = True) -> dict:
    """A direct COCOEvalCap run (SPICE stubbed out: it cannot run offline)."""
    import pycocoevalcap.eval as ce

    class _NoSpice:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    class _Identity:
        def tokenize(self, captions_for_image):
            return {k: [c["caption"] for c in v] for k, v in captions_for_image.items()}

    ids = [img["id"] for img in refs["images"]]
    coco_eval = ce.COCOEvalCap(_CocoLike(refs["annotations"], ids), _CocoLike(preds, ids))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ce, "Spice", _NoSpice)
        mp.setattr(ce, "Meteor", lambda: meteor)  # one JVM for both reference runs
        if not tokenize:
            mp.setattr(ce, "PTBTokenizer", _Identity)
        coco_eval.evaluate()
    return {"metrics": {k: coco_eval.eval[k] for k in ALL},
            "per_image": {k: {m: v[m] for m in ALL} for k, v in coco_eval.imgToEval.items()}}


def _assert_equal(ours: dict, ref: dict, tol: float = 1e-9):
    for m in ALL:
        assert math.isclose(ours["metrics"][m], ref["metrics"][m], rel_tol=0, abs_tol=tol), m
    assert set(ours["per_image"]) == set(ref["per_image"])
    for image_id, values in ref["per_image"].items():
        for m in ALL:
            assert math.isclose(ours["per_image"][image_id][m], values[m], rel_tol=0,
                                abs_tol=tol), (image_id, m)


# --------------------------------------------------------------------------------------------
# shared Java-backed fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer():
    # Two JVMs so the chunked multi-JVM path is what gets compared with COCOEvalCap.
    s = scoring.Scorer(meteor_jvms=2, prestart=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference_runs(scorer):
    """COCOEvalCap on the test data, tokenized and untokenized, sharing one METEOR JVM."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    refs, preds = make_data()
    refs_1l, preds_1l = make_data(single_line=True)
    try:
        return {"tok": (refs, preds, _cocoevalcap(refs, preds, meteor)),
                "raw": (refs_1l, preds_1l, _cocoevalcap(refs_1l, preds_1l, meteor, False))}
    finally:
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


@pytest.fixture(scope="module")
def tokenized_result(scorer, reference_runs):
    refs, preds, _ = reference_runs["tok"]
    return scoring.score(refs, preds, scorer=scorer)


# --------------------------------------------------------------------------------------------
# equality with COCOEvalCap
# --------------------------------------------------------------------------------------------

@needs_java
def test_score_equals_cocoevalcap(reference_runs, tokenized_result):
    _assert_equal(tokenized_result, reference_runs["tok"][2])
    assert tokenized_result["n_images"] == 200 and tokenized_result["tokenized"] is True
    assert tokenized_result["scored_subset"] is False


@needs_java
def test_untokenized_equals_cocoevalcap_without_tokenizer(scorer, reference_runs):
    refs, preds, expected = reference_runs["raw"]
    ours = scoring.score(refs, preds, tokenize=False, scorer=scorer)
    _assert_equal(ours, expected)
    assert ours["tokenized"] is False


@needs_java
def test_scorer_reuse_is_identical(scorer, reference_runs, tokenized_result):
    refs, preds, _ = reference_runs["tok"]
    again = scorer.score(refs, preds)
    assert again["metrics"] == tokenized_result["metrics"]
    assert again["per_image"] == tokenized_result["per_image"]


@needs_java
def test_spice_reported_unavailable_with_reason(tokenized_result):
    reason = scoring.spice_unavailable_reason()
    if reason is None:
        pytest.skip("SPICE can run on this machine")
    assert tokenized_result["metrics"]["SPICE"] is None
    assert tokenized_result["unavailable"]["SPICE"] == reason
    assert "CoreNLP" in reason or "Java" in reason


@needs_java
def test_sacrebleu_extra_on_untokenized_text(tokenized_result, reference_runs):
    import sacrebleu

    refs, preds, _ = reference_runs["tok"]
    by_image: dict = {}
    for a in refs["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    hyps = [p["caption"] for p in preds]
    ref_lists = [by_image[p["image_id"]] for p in preds]
    streams = [[r[j] if j < len(r) else None for r in ref_lists] for j in range(6)]
    expected = sacrebleu.metrics.BLEU().corpus_score(hyps, streams).score
    assert tokenized_result["extras"][scoring.SACREBLEU_KEY] == pytest.approx(expected, abs=1e-9)


@needs_java
def test_allow_missing_scores_the_predicted_subset(scorer, reference_runs):
    refs, preds, _ = reference_runs["tok"]
    kept = preds[::3]
    with pytest.raises(UserError, match=r"133 of 200 .*--allow-missing"):
        scoring.score(refs, kept, scorer=scorer, metrics=["CIDEr"])
    sub = scoring.score(refs, kept, allow_missing=True, scorer=scorer)
    assert sub["scored_subset"] is True and sub["n_images"] == len(kept)
    keep_ids = {p["image_id"] for p in kept}
    only = {"images": [i for i in refs["images"] if i["id"] in keep_ids],
            "annotations": [a for a in refs["annotations"] if a["image_id"] in keep_ids]}
    direct = scoring.score(only, kept, scorer=scorer)
    assert sub["metrics"] == direct["metrics"] and sub["per_image"] == direct["per_image"]


@needs_java
def test_evaluate_module_equals_score(scorer, reference_runs, tokenized_result):
    import evaluate

    refs, preds, _ = reference_runs["tok"]
    by_image: dict = {}
    for a in refs["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    metric = evaluate.load(str(REPO / "eval" / "coco_caption"))
    out = metric.compute(predictions=[p["caption"] for p in preds],
                         references=[by_image[p["image_id"]] for p in preds], scorer=scorer)
    for m in ALL + ("SPICE",):
        assert out[m] == tokenized_result["metrics"][m], m
    assert out["n_images"] == 200
    assert out[scoring.SACREBLEU_KEY] == tokenized_result["extras"][scoring.SACREBLEU_KEY]


def test_evaluate_module_needs_the_installed_toolkit_and_says_so(monkeypatch):
    """evaluate runs a cached copy of the module: it imports the installed toolkit (no
    sys.path edits), and without it says how to install it."""
    import importlib.util
    import sys

    path = REPO / "eval" / "coco_caption" / "coco_caption.py"
    spec = importlib.util.spec_from_file_location("coco_caption_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._scoring() is scoring
    monkeypatch.setitem(sys.modules, "eval", None)  # as if the toolkit were not installed
    with pytest.raises(ImportError, match="pip install -e"):
        module._scoring()


@needs_java
def test_meteor_corpus_sum_equals_full_eval(scorer, reference_runs):
    # The corpus METEOR is computed from stats summed here; compare with the jar's own EVAL
    # over every line, on subsets that include perfect matches and paraphrase matches.
    refs, preds, _ = reference_runs["tok"]
    ids, r, p, _, _ = inputs.prepare(refs, preds, False, True)
    gts, res = ptb.ptb_tokenize([{k: r[k] for k in ids}, {k: [p[k]] for k in ids}])
    pool = scorer._meteor
    pool.start()
    lines = [" ||| ".join(("SCORE", " ||| ".join(gts[k]), res[k][0].replace("|||", "")
                           .replace("  ", " "))) for k in ids]
    jvm = pool.jvms[0]
    stats = [s.strip() for s in jvm.request(("\n".join(lines) + "\n").encode(), len(lines))]
    rng = random.Random(1)
    for size in (1, 2, 7, 50, len(stats)):
        subset = rng.sample(stats, size)
        full = jvm.request(("EVAL ||| " + " ||| ".join(subset) + "\n").encode(), size + 1)[-1]
        summed = jvm.request(f"EVAL ||| {pool._sum_stats(subset)}\n".encode(), 2)[0]
        assert float(full) == float(summed), size


def test_fast_cider_rouge_and_bleu_are_bit_identical():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(40)] + ["a", "the", "on", ""]
    gts, res = {}, {}
    for i in range(300):
        gts[i] = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 15)))
                  for _ in range(rng.randint(1, 6))]
        res[i] = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 15)))]
    gts[0], res[0] = ["a a a a"], ["a a a a"]  # repeated n-grams: term_freq > 1
    gts[1], res[1] = ["x  y"], [""]             # double space and empty hypothesis
    keys = list(gts)
    for ours, theirs in ((ngram.cider_d, Cider()), (ngram.rouge_l, Rouge())):
        score, scores = ours(gts, res, keys)
        ref_score, ref_scores = theirs.compute_score(gts, res)
        assert score == ref_score
        assert scores.tolist() == ref_scores.tolist()
    score, scores = ngram.bleu(gts, res, keys)
    ref_score, ref_scores = Bleu(4).compute_score(gts, res, verbose=0)
    assert score == ref_score and scores == ref_scores


# --------------------------------------------------------------------------------------------
# validation errors (no JVM needed: inputs are checked before anything starts)
# --------------------------------------------------------------------------------------------

def _small():
    refs = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
            "annotations": [{"image_id": i, "id": i, "caption": f"a cat number {i}"}
                            for i in (1, 2, 3)]}
    preds = [{"image_id": i, "caption": "a cat"} for i in (1, 2, 3)]
    return refs, preds


@pytest.mark.parametrize("mutate, pattern", [
    (lambda r, p: p.append({"image_id": 99, "caption": "x"}), r"image id 99 has no references"),
    (lambda r, p: p.__setitem__(0, {"image_id": "1", "caption": "x"}),
     r"image id '1' has no references \(references use integer ids"),
    (lambda r, p: p.pop(), r"1 of 3 referenced images have no prediction \(3\).*--allow-missing"),
    (lambda r, p: p.append({"image_id": 2, "caption": "x"}), r"2 predictions for image id 2"),
    (lambda r, p: p[1].__setitem__("caption", "  \t"), r"image id 2 is empty or whitespace"),
    (lambda r, p: p[2].__setitem__("caption", ""), r"image id 3 is empty"),
    (lambda r, p: p[0].__setitem__("caption", ["a", "cat"]), r"image id 1 is list, not a string"),
    (lambda r, p: r["annotations"][0].__setitem__("caption", None),
     r"reference caption for image id 1 is NoneType"),
    (lambda r, p: p.clear(), r"predictions are empty"),
    # a 1 MB caption killed the METEOR JVM and a 52 MB one hung the tokenizer: refused up front
    (lambda r, p: p[1].__setitem__("caption", "cat " * 250_000),
     r"prediction caption for image id 2 is 1,000,000 characters long: captions over 10,000 are refused"),
    (lambda r, p: r["annotations"][0].__setitem__("caption", "x" * 10_001), r"reference caption for image id 1 is "
                                                                               r"10,001 characters long"),
    (lambda r, p: p[0].pop("caption"), r'prediction without "image_id" and "caption"'),
    (lambda r, p: r["annotations"].append({"image_id": 7, "id": 9, "caption": "x"}),
     r'image_id 7 that is not in references\["images"\]'),
])
def test_input_errors(mutate, pattern):
    refs, preds = _small()
    mutate(refs, preds)
    with pytest.raises(UserError, match=pattern) as err:
        scoring.score(refs, preds)
    assert "\n" not in str(err.value)


def test_bad_arguments():
    refs, preds = _small()
    with pytest.raises(UserError, match="unknown metric 'BLEU5'"):
        scoring.score(refs, preds, metrics=["BLEU5"])
    with pytest.raises(UserError, match="must be a COCO results list"):
        scoring.score(refs, {"annotations": preds})
    preds[0]["caption"] = "two\nlines"
    with pytest.raises(UserError, match="image id 1 contains a line break"):
        scoring.score(refs, preds, tokenize=False)


def test_missing_java_is_a_user_error(monkeypatch):
    refs, preds = _small()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    scoring._java.cache_clear()
    try:
        with pytest.raises(UserError, match=r"apt-get install default-jre-headless"):
            scoring.score(refs, preds)
        assert scoring.spice_unavailable_reason()  # a reason, whichever check fails first
    finally:
        scoring._java.cache_clear()


def test_no_java_needed_without_tokenizer_and_meteor(monkeypatch):
    refs, preds = _small()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    scoring._java.cache_clear()
    try:
        out = scoring.score(refs, preds, tokenize=False, metrics=["Bleu", "ROUGE_L", "CIDEr"])
    finally:
        scoring._java.cache_clear()
    assert set(out["metrics"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert out["metrics"]["CIDEr"] == 0.0  # 3 images, one shared n-gram set: idf is zero


# --------------------------------------------------------------------------------------------
# I/O helpers
# --------------------------------------------------------------------------------------------

def test_load_json_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "preds.json"
    bad.write_text('[\n  {"image_id": 1, "caption": "a"},\n  {"image_id": 2 "caption": "b"}\n]')
    with pytest.raises(UserError, match=r"preds\.json is not valid JSON: .* line 3 column 18"):
        scoring.load_json(bad, "predictions")
    good = tmp_path / "refs.json"
    good.write_text(json.dumps([{"image_id": 1, "caption": "a"}]))
    with pytest.raises(UserError, match="must be COCO caption annotations"):
        scoring.load_json(good, "references")
    assert scoring.load_json(good, "predictions") == [{"image_id": 1, "caption": "a"}]
    with pytest.raises(UserError, match="predictions file not found"):
        scoring.load_json(tmp_path / "nope.json", "predictions")
    refs = tmp_path / "r.json"
    refs.write_text(json.dumps({"annotations": []}))
    with pytest.raises(UserError, match="it looks like a references file"):
        scoring.load_json(refs, "predictions")


def test_write_json_atomic_and_format_table(tmp_path):
    result = {"metrics": {"Bleu_4": 0.31234, "CIDEr": 1.05, "SPICE": None},
              "unavailable": {"SPICE": "needs Java 8"}, "extras": {scoring.SACREBLEU_KEY: 30.1},
              "n_images": 5000, "tokenized": True, "per_image": {1: {"CIDEr": 1.0}}}
    path = write_json(tmp_path / "sub" / "metrics.json", result)
    assert json.loads(path.read_text())["metrics"]["CIDEr"] == 1.05
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left
    table = scoring.format_table(result)
    assert "n_images=5000" in table and "0.3123" in table
    assert "SPICE" in table and "n/a" in table and "needs Java 8" in table
    assert "0-100" in table


@needs_java
def test_close_stops_jvms_and_is_idempotent():
    s = scoring.Scorer(meteor_jvms=1, prestart=True)
    procs = [j.proc for j in s._meteor.jvms]
    s.close()
    s.close()
    assert procs and all(p.poll() is not None for p in procs)


def test_oversized_json_files_are_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "preds.json"
    path.write_text(json.dumps([{"image_id": 1, "caption": "a cat"}] * 100))
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 1000)
    with pytest.raises(UserError, match=r"predictions file .*preds\.json is [\d,]+ bytes: files over 1,000 bytes are "
                                        r"refused"):
        scoring.load_json(path, "predictions")
