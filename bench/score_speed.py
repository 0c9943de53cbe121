"""How much faster is `eval.scoring` than the naive pycocoevalcap way, with equal numbers?

    python bench/score_speed.py --sizes 5000,25000 --out bench/results/score_speed.json

"Naive" is what COCOEvalCap does: a new PTBTokenizer JVM for references and another for
predictions, then BLEU, a fresh METEOR JVM, ROUGE-L and CIDEr one after the other. The
contender is `eval.scoring.score` (fresh: it starts its own METEOR JVMs) and, for the
training-validation case, a warm `eval.scoring.Scorer` re-scoring the same size. Variants
alternate within one run because absolute times drift ~2x on shared machines; the script
asserts that every metric (corpus and per image) is identical before it reports a ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Real English words so that METEOR's stemmer, synonym and paraphrase modules do real work
# (pseudo-words would never match the paraphrase table and make METEOR look cheap).
_NOUNS = """man woman person people child boy girl kid baby player skier surfer skateboarder
rider crowd group team family couple dog cat horse cow sheep elephant giraffe zebra bear bird
duck pigeon animal car truck bus train bike bicycle motorcycle plane airplane boat ship street
road sidewalk highway intersection building house tower clock sign light pole fence wall
window door room kitchen bathroom bedroom table desk chair couch bed sink toilet mirror
counter shelf oven stove refrigerator microwave laptop computer keyboard mouse phone screen
television remote book paper umbrella bag backpack suitcase hat shirt jacket tie dress
glasses pizza sandwich cake donut banana apple orange broccoli carrot hot dog plate bowl cup
glass bottle fork knife spoon food meal vegetable fruit field grass tree forest mountain hill
snow beach ocean water wave river lake sky cloud sun park yard garden flower plant rock sand
court ball racket frisbee kite skateboard surfboard ski board net bench area city town
market station airport track platform parking lot corner background front top side middle
picture photo view scene stop fire hydrant vase scissors teddy toy box basket pan pot""".split()
_VERBS = """sit stand walk run ride hold eat drink play fly look watch lay lie park carry throw
catch hit swing jump wait cross cut cook prepare serve talk smile pose wear show fill cover
sleep rest graze stare drive pull push hang line display float surf skate ski use read
reach kick chase open""".split()
_ADJS = """large small big little tall short old young red blue green yellow white black brown
gray orange pink purple wooden metal empty full busy crowded clean dirty open closed bright
dark sunny cloudy snowy grassy sandy colorful several many two three four five various
different modern tiny huge""".split()
_FUNCTION = """a a a an the the the of of on on in in with with and and at near next to
by under over behind while is are that this his her their some top""".split()
_PREPS = ["on", "in", "at", "near", "next to", "by", "under", "over", "behind", "in front of",
          "on top of", "with", "along", "across", "inside"]
_NUMBERS = ["2", "3", "4", "10", "1950s", "two", "three"]


_IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children",
              "sheep": "sheep", "mouse": "mice", "knife": "knives", "people": "people",
              "glasses": "glasses", "baby": "babies", "family": "families", "city": "cities"}


def _inflect(word: str, kind: str) -> list[str]:
    if kind == "noun":
        plural = _IRREGULAR.get(word) or word + ("es" if word.endswith(("s", "sh", "ch", "x"))
                                                   else "s")
        return [word] if plural == word else [word, plural]
    if kind == "verb":
        stem = word[:-1] if word.endswith("e") and word not in ("see",) else word
        return [word, word + "s", stem + "ing", stem + "ed"]
    return [word]


def _wordnet_tail(n: int = 3000, seed: int = 0) -> list[str]:
    # The long tail: real, rarer English words from the WordNet lemma list shipped inside
    # pycocoevalcap's METEOR jar, so no download and the same list on every machine.
    import zipfile

    import pycocoevalcap.meteor.meteor as meteor_module

    jar = Path(meteor_module.__file__).parent / "meteor-1.5.jar"
    with zipfile.ZipFile(jar) as z:
        lines = z.read("synonym/english.synsets").decode("utf-8", "replace").splitlines()
    words = sorted({w for w in lines[0::2] if re.fullmatch(r"[a-z]{3,9}", w)})
    return random.Random(seed).sample(words, min(n, len(words)))


def vocabulary() -> tuple[list[str], list[str], list[str]]:
    """Nouns, verbs and adjectives (with inflections): a few thousand distinct word forms.

    Common caption words come first (high Zipf rank); nouns continue into a WordNet tail.
    """
    nouns = [f for w in _NOUNS for f in _inflect(w, "noun")] + _wordnet_tail()
    verbs = [f for w in _VERBS for f in _inflect(w, "verb")]
    adjs = list(_ADJS)
    return nouns, verbs, adjs


def _zipf_pick(rng: random.Random, words: list[str], s: float = 1.1) -> str:
    # Rank-frequency ~ 1/rank^s: a handful of very common words and a long tail, as in COCO.
    weights = _zipf_pick.cache.get((id(words), s))
    if weights is None:
        acc, total = [], 0.0
        for rank in range(1, len(words) + 1):
            total += 1.0 / rank ** s
            acc.append(total)
        weights = _zipf_pick.cache[(id(words), s)] = acc
    return rng.choices(words, cum_weights=weights)[0]


_zipf_pick.cache = {}


def _caption(rng: random.Random, scene: dict, nouns, verbs, adjs) -> str:
    def maybe(word_list, fallback):
        # 70% keep the scene's word (refs agree), 30% a Zipf draw (refs and preds disagree).
        return fallback if rng.random() < 0.7 else _zipf_pick(rng, word_list)

    subj = maybe(nouns, scene["subj"])
    obj = maybe(nouns, scene["obj"])
    adj = maybe(adjs, scene["adj"])
    verb = maybe(verbs, scene["verb"])
    prep = rng.choice(_PREPS) if rng.random() < 0.3 else scene["prep"]
    det = rng.choice(["a", "a", "an", "the", "one", rng.choice(_NUMBERS)])
    words = [det, adj, subj, "is" if rng.random() < 0.4 else "", verb, prep, "the", obj]
    if rng.random() < 0.5:
        words += [rng.choice(["with", "and", "near", "while"]), rng.choice(["a", "some", "the"]),
                  _zipf_pick(rng, adjs), _zipf_pick(rng, nouns)]
    if rng.random() < 0.15:
        words.insert(3, ",")
    text = " ".join(w for w in words if w).replace(" ,", ",")
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.6:
        text += rng.choice([".", ".", " .", "!", ""])
    if rng.random() < 0.05:
        text = text.replace(" the ", " the  ", 1)  # stray double spaces happen in real data
    if rng.random() < 0.03:
        text = text.replace("a ", "a \"nice\" ", 1)
    return text


def synthetic_coco(n_images: int, refs_per_image: int = 5, seed: int = 0) -> tuple[dict, list]:
    """COCO-style references (`{"images", "annotations"}`) and a results list for them.

    ~10 words per caption, Zipf-distributed words over a few thousand forms, some casing and
    punctuation; the prediction is drawn from the same scene as its references so n-grams
    overlap about as much as a mediocre captioning model's do.
    """
    rng = random.Random(seed)
    nouns, verbs, adjs = vocabulary()
    images, anns, preds = [], [], []
    ann_id = 0
    for i in range(n_images):
        image_id = 100000 + i * 7  # not 0..n-1: ids in real data are sparse
        scene = {
            "subj": _zipf_pick(rng, nouns), "obj": _zipf_pick(rng, nouns),
            "adj": _zipf_pick(rng, adjs), "verb": _zipf_pick(rng, verbs),
            "prep": rng.choice(_PREPS),
        }
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg"})
        for _ in range(refs_per_image):
            anns.append({"image_id": image_id, "id": ann_id,
                         "caption": _caption(rng, scene, nouns, verbs, adjs)})
            ann_id += 1
        preds.append({"image_id": image_id, "caption": _caption(rng, scene, nouns, verbs, adjs)})
    return {"images": images, "annotations": anns}, preds


def naive_score(references: dict, predictions: list) -> dict:
    """COCOEvalCap's own sequence (minus SPICE, which cannot run here): the baseline."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts, res = {}, {}
    for img in references["images"]:
        gts[img["id"]] = []
    for ann in references["annotations"]:
        gts[ann["image_id"]].append(ann)
    for p in predictions:
        res[p["image_id"]] = [p]
    gts = PTBTokenizer().tokenize(gts)
    res = PTBTokenizer().tokenize(res)
    out, per_image = {}, {}
    for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]),
                          (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]:
        if names[0] == "Bleu_1":
            score, scores = scorer.compute_score(gts, res, verbose=0)
        else:
            score, scores = scorer.compute_score(gts, res)
            score, scores = [score], [scores]
        for name, sc, scs in zip(names, score, scores):
            out[name] = float(sc)
            for img_id, s in zip(gts.keys(), scs):
                per_image.setdefault(img_id, {})[name] = float(s)
        del scorer  # COCOEvalCap drops its scorers (and so the METEOR JVM) when it is done
    return {"metrics": out, "per_image": per_image}


def _same(a: dict, b: dict) -> bool:
    names = [k for k, v in a["metrics"].items() if v is not None]  # SPICE: None in both
    if any(a["metrics"][k] != b["metrics"][k] for k in names):
        return False
    if set(a["per_image"]) != set(b["per_image"]):
        return False
    return all(a["per_image"][i][k] == b["per_image"][i][k]
               for i in a["per_image"] for k in names)


def _java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (out.stderr or out.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unavailable"


def _cpu_seconds() -> float:
    # This process plus its finished children (the JVMs are waited for when closed).
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


CPU: dict = {}


def _timed(fn, *args, **kwargs):
    """(wall seconds, result); CPU seconds of the call land in CPU["last"]."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    out = fn(*args, **kwargs)
    wall = time.perf_counter() - t0
    CPU["last"] = round(_cpu_seconds() - c0, 1)
    return wall, out


def main(argv=None) -> int:
    """Run the benchmark; returns a process exit code (1 if any numbers differ)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,25000", help="comma-separated image counts")
    ap.add_argument("--refs", type=int, default=5, help="references per image")
    ap.add_argument("--warm-size", type=int, default=5000,
                    help="size for the warm re-score vs fresh comparison (0 to skip)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "score_speed.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    from captioning.records import write_json
    from eval import scoring

    rows, ok = [], True
    for n in sizes:
        refs, preds = synthetic_coco(n, args.refs, seed=n)
        # Alternate: naive, ours, naive-order effects (page cache of the jars) hit both.
        load = os.getloadavg()[0]
        t_naive, naive = _timed(naive_score, refs, preds)
        cpu_naive = CPU["last"]
        t_ours, ours = _timed(scoring.score, refs, preds)
        cpu_ours = CPU["last"]
        same = _same(naive, ours)
        ok &= same
        rows.append({"images": n, "refs_per_image": args.refs, "naive_s": round(t_naive, 2),
                     "score_s": round(t_ours, 2), "speedup": round(t_naive / t_ours, 2),
                     "naive_cpu_s": cpu_naive, "score_cpu_s": cpu_ours,
                     "loadavg_1min_before": round(load, 2),
                     "identical": same, "metrics": ours["metrics"]})
        print(f"{n} images: naive {t_naive:.1f} s ({cpu_naive} CPU-s), score() {t_ours:.1f} s "
              f"({cpu_ours} CPU-s), {t_naive / t_ours:.2f}x, identical={same}, "
              f"load {load:.1f}", flush=True)

    warm = None
    if args.warm_size:
        n = args.warm_size
        refs, preds = synthetic_coco(n, args.refs, seed=n)
        load = os.getloadavg()[0]
        t_fresh, fresh = _timed(scoring.score, refs, preds)
        with scoring.Scorer() as scorer:
            t_first, first = _timed(scorer.score, refs, preds)
            # Training validation: same references, new predictions each time. Reference-side
            # work (their tokens, cooked n-grams) is cached; METEOR JVMs are warm.
            # Several re-scores, as in training (one per validation round): the JVMs' JIT
            # keeps warming over the first few, so the median is reported with each time.
            rescores = [_timed(scorer.score, refs, preds) for _ in range(3)]
            warm_times = [round(t, 2) for t, _ in rescores]
            t_warm = statistics.median(t for t, _ in rescores)
            # Only the JVMs warm, nothing cached (e.g. a different reference set each time).
            scorer.cache_references = False
            scorer.clear_cache()
            t_nocache, nocache = _timed(scorer.score, refs, preds)
        same = all(_same(fresh, x) for x in (first, *(r for _, r in rescores), nocache))
        ok &= same
        warm = {"images": n, "fresh_s": round(t_fresh, 2), "scorer_first_s": round(t_first, 2),
                "loadavg_1min_before": round(load, 2),
                "warm_rescore_s": round(t_warm, 2), "warm_rescores_s": warm_times,
                "speedup": round(t_fresh / t_warm, 2),
                "meteor_jvms": scorer.meteor_jvms,
                "warm_no_reference_cache_s": round(t_nocache, 2),
                "speedup_no_reference_cache": round(t_fresh / t_nocache, 2),
                "identical": same}
        print(f"warm re-score {n}: fresh {t_fresh:.1f} s, warm {t_warm:.1f} s (median of "
              f"{warm_times}) "
              f"({t_fresh / t_warm:.2f}x), warm without reference cache {t_nocache:.1f} s "
              f"({t_fresh / t_nocache:.2f}x), identical={same}", flush=True)

    result = {
        "question": "eval.scoring vs naive pycocoevalcap (COCOEvalCap order), equal numbers",
        "sizes": rows, "warm": warm, "identical": ok,
        "note": "wall-clock ratios from one alternating run each; other jobs shared the "
                "machine when loadavg_1min_before exceeds cpu_count. A one-shot score() "
                "starts 1 METEOR JVM below 10k images, 2 from 10k when a core is idle.",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "java": _java_version(),
                    "processor": platform.processor() or platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)

    print("\n| images x refs | naive (s) | score() (s) | speedup | identical | load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} x {r['refs_per_image']} | {r['naive_s']} | {r['score_s']} | "
              f"{r['speedup']}x | {r['identical']} | {r['loadavg_1min_before']} |")
    if warm:
        print(f"| {warm['images']} x {args.refs} warm Scorer re-score | {warm['fresh_s']} "
              f"(fresh score()) | {warm['warm_rescore_s']} | {warm['speedup']}x | "
              f"{warm['identical']} | |")
        print(f"| {warm['images']} x {args.refs} warm, no reference cache | {warm['fresh_s']} "
              f"(fresh score()) | {warm['warm_no_reference_cache_s']} | "
              f"{warm['speedup_no_reference_cache']}x | {warm['identical']} | |")
    print(f"\nwrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
