"""How fast is `eval.scoring`, against the naive pycocoevalcap way and against another version of itself?

    python bench/score_speed.py --sizes 5000 --shapes 100 --repeats 3   # naive, score(), warm Scorer
    python bench/score_speed.py --sizes 5000,25000 --repeats 3 --variants new/score,new/score/-gc
    git worktree add /tmp/before 9158adc        # old vs new, and each old trick switched off:
    python bench/score_speed.py --old /tmp/before --sizes 5000 --shapes 100 --repeats 3 --variants \
        new/score,old/score,old/score/-gc,old/score/-nice,old/score/-jvmflags,new/warm,old/warm,old/warm/-autojvm

A variant is CODE/MODE[/-TRICK]: CODE is `new` (this checkout) or `old` (the tree given by
--old); MODE is `score` (a one-shot `score()`), `warm` (a `Scorer` re-scoring the same
references: the median of three re-scores after a first call) or `naive` (COCOEvalCap's own
sequence: a new PTBTokenizer for references and predictions, then BLEU, a fresh METEOR JVM,
ROUGE-L and CIDEr one after the other); `-TRICK` switches one speed trick off (see _tricks).
Each measurement runs in a fresh process, the variants alternate within each repeat
(absolute times drift ~2x on shared machines), and the script exits 1 unless every variant
gives bit-identical metrics (corpus and per image) on each data set.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

# Real English words so that METEOR's stemmer, synonym and paraphrase modules do real work
# (pseudo-words would never match the paraphrase table and make METEOR look cheap).
_NOUNS = """man woman person people child boy girl kid baby player skier surfer skateboarder rider crowd group team
family couple dog cat horse cow sheep elephant giraffe zebra bear bird duck pigeon animal car truck bus train bike
bicycle motorcycle plane airplane boat ship street road sidewalk highway intersection building house tower clock
sign light pole fence wall window door room kitchen bathroom bedroom table desk chair couch bed sink toilet mirror
counter shelf oven stove refrigerator microwave laptop computer keyboard mouse phone screen television remote book
paper umbrella bag backpack suitcase hat shirt jacket tie dress glasses pizza sandwich cake donut banana apple
orange broccoli carrot hot dog plate bowl cup glass bottle fork knife spoon food meal vegetable fruit field grass
tree forest mountain hill snow beach ocean water wave river lake sky cloud sun park yard garden flower plant rock
sand court ball racket frisbee kite skateboard surfboard ski board net bench area city town market station airport
track platform parking lot corner background front top side middle picture photo view scene stop fire hydrant vase
scissors teddy toy box basket pan pot""".split()
_VERBS = """sit stand walk run ride hold eat drink play fly look watch lay lie park carry throw catch hit swing jump
wait cross cut cook prepare serve talk smile pose wear show fill cover sleep rest graze stare drive pull push hang
line display float surf skate ski use read reach kick chase open""".split()
_ADJS = """large small big little tall short old young red blue green yellow white black brown gray orange pink
purple wooden metal empty full busy crowded clean dirty open closed bright dark sunny cloudy snowy grassy sandy
colorful several many two three four five various different modern tiny huge""".split()
_PREPS = ["on", "in", "at", "near", "next to", "by", "under", "over", "behind", "in front of",
          "on top of", "with", "along", "across", "inside"]
_NUMBERS = ["2", "3", "4", "10", "1950s", "two", "three"]


_IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children", "sheep": "sheep",
              "mouse": "mice", "knife": "knives", "people": "people", "glasses": "glasses", "baby": "babies",
              "family": "families", "city": "cities"}


def _inflect(word: str, kind: str) -> list[str]:
    if kind == "noun":
        plural = _IRREGULAR.get(word) or word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")
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
    return ([f for w in _NOUNS for f in _inflect(w, "noun")] + _wordnet_tail(),
            [f for w in _VERBS for f in _inflect(w, "verb")], list(_ADJS))


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
        scene = {"subj": _zipf_pick(rng, nouns), "obj": _zipf_pick(rng, nouns), "adj": _zipf_pick(rng, adjs),
                 "verb": _zipf_pick(rng, verbs), "prep": rng.choice(_PREPS)}
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg"})
        for _ in range(refs_per_image):
            anns.append({"image_id": image_id, "id": ann_id, "caption": _caption(rng, scene, nouns, verbs, adjs)})
            ann_id += 1
        preds.append({"image_id": image_id, "caption": _caption(rng, scene, nouns, verbs, adjs)})
    return {"images": images, "annotations": anns}, preds


def shapes_coco(n_images: int) -> tuple[dict, list]:
    """The shapes test split's references; each image is predicted with its neighbour's first
    reference (the same template, other shapes and colours: a partly right caption)."""
    from synthetic.shapes import generate

    with tempfile.TemporaryDirectory(prefix="score-speed-shapes-") as tmp:
        root = generate(tmp, seed=0, n_train=1, n_val=1, n_test=n_images)
        refs = json.loads((root / "annotations" / "captions_test.json").read_text())
    first: dict = {}
    for ann in refs["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"])
    ids = [img["id"] for img in refs["images"]]
    return refs, [{"image_id": i, "caption": first[ids[(j + 1) % len(ids)]]} for j, i in enumerate(ids)]


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


def _tricks(scoring, code: str) -> dict:
    """How to switch off each speed trick: the new package keeps only the paused GC."""
    if code == "new":
        return {"gc": lambda: setattr(scoring.scorer, "_gc_paused", contextlib.nullcontext)}
    return {  # the old, monolithic eval/scoring.py
        "gc": lambda: setattr(scoring, "_gc_paused", contextlib.nullcontext),
        "nice": lambda: setattr(scoring, "_lower_thread_priority", lambda nice=10: None),
        "jvmflags": scoring._METEOR_JVM_FLAGS.clear,  # -XX:+UseParallelGC -Xmn1200m -Xms2G
        "autojvm": lambda: setattr(scoring, "_auto_jvms", lambda idle_needed: 1),  # /proc/stat -> 2nd JVM
    }


def _cpu_seconds() -> float:
    import resource  # this process plus its finished children (the JVMs are waited for)

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _digest(result: dict) -> str:
    # The seven COCO metrics, corpus and per image, as exact float reprs.
    doc = {"metrics": {k: result["metrics"][k] for k in COCO},
           "per_image": {str(i): {k: v[k] for k in COCO} for i, v in result["per_image"].items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def worker(args) -> None:
    """One measurement in this process: prints a JSON line (wall, CPU, digest)."""
    code, mode, *off = ["new", "naive"] if args.variant == "naive" else args.variant.split("/")
    sys.path.insert(0, str(Path(args.old).resolve() if code == "old" else REPO))
    if args.data == "shapes":
        refs, preds = shapes_coco(args.size)
    else:
        refs, preds = synthetic_coco(args.size, args.refs, seed=args.size)
    from eval import scoring

    for trick in off:
        _tricks(scoring, code)[trick.lstrip("-")]()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    extra = {}
    if mode == "naive":
        result = naive_score(refs, preds)
    elif mode == "score":
        result = scoring.score(refs, preds)
    else:
        with scoring.Scorer() as scorer:
            first = scorer.score(refs, preds)
            extra["first_s"] = round(time.perf_counter() - t0, 2)
            times = []
            for _ in range(3):
                t1 = time.perf_counter()
                result = scorer.score(refs, preds)
                times.append(round(time.perf_counter() - t1, 2))
            extra.update(rescores_s=times, meteor_jvms=scorer.meteor_jvms,
                         same_as_first=_digest(first) == _digest(result))
    wall = statistics.median(times) if mode == "warm" else time.perf_counter() - t0
    print(json.dumps({"wall_s": round(wall, 3), "cpu_s": round(_cpu_seconds() - c0, 1),
                      "digest": _digest(result), **extra}))


def _measure(variant: str, data: str, size: int, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant, "--data", data,
           "--size", str(size), "--refs", str(args.refs), "--old", args.old or ""]
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                         env={**os.environ, "PYTHONPATH": ""})
    if out.returncode != 0:
        raise SystemExit(f"{variant} on {data} {size} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "loadavg_before": round(load, 2)}


def main(argv=None) -> int:
    """Run the benchmark; returns a process exit code (1 if any numbers differ)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000", help="comma-separated synthetic image counts (empty: none)")
    ap.add_argument("--refs", type=int, default=5, help="references per synthetic image")
    ap.add_argument("--shapes", type=int, default=0, help="also the shapes test split with this many images")
    ap.add_argument("--variants", default="naive,new/score,new/warm", help="CODE/MODE[/-TRICK], comma-separated")
    ap.add_argument("--old", default=None, help="root of another checkout, for old/... variants")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "score_speed.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one measurement:
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if any(v.startswith("old/") for v in variants) and not args.old:
        ap.error("old/... variants need --old ROOT (e.g. a `git worktree add` of the commit to compare)")
    sets = [("synthetic", int(s)) for s in args.sizes.split(",") if s.strip()]
    sets += [("shapes", args.shapes)] if args.shapes else []

    runs: dict = {f"{d}/{n}": {v: [] for v in variants} for d, n in sets}
    for rep in range(args.repeats):
        for data, n in sets:
            for v in (variants if rep % 2 == 0 else variants[::-1]):  # alternate the order too
                r = _measure(v, data, n, args)
                runs[f"{data}/{n}"][v].append(r)
                print(f"[{rep + 1}/{args.repeats}] {data} {n} {v}: {r['wall_s']} s ({r['cpu_s']} CPU-s) "
                      f"load {r['loadavg_before']}", flush=True)

    ok, table = True, []
    for key, by_variant in runs.items():
        digests = {r["digest"] for rs in by_variant.values() for r in rs}
        same = len(digests) == 1 and all(r.get("same_as_first", True) for rs in by_variant.values() for r in rs)
        ok &= same
        for v, rs in by_variant.items():
            med = statistics.median(r["wall_s"] for r in rs)
            base_v = v.rsplit("/", 1)[0] if "/-" in v else None  # a trick off: vs the same code with it on
            base = statistics.median(r["wall_s"] for r in by_variant[base_v]) if base_v in by_variant else None
            table.append({"data": key, "variant": v, "median_s": round(med, 2), "times_s": [r["wall_s"] for r in rs],
                          "cpu_s": [r["cpu_s"] for r in rs], "identical": same,
                          "trick_ratio": round(med / base, 3) if base else None})
    for row in table:
        ratio = f" | off/on {row['trick_ratio']}x" if row["trick_ratio"] else ""
        print(f"| {row['data']} | {row['variant']} | {row['median_s']} | {row['times_s']} | "
              f"{row['cpu_s']} | {row['identical']}{ratio} |")
    result = {"question": "eval.scoring: naive pycocoevalcap, old and new code, tricks on/off; equal numbers",
              "variants": variants, "repeats": args.repeats, "old": args.old, "table": table, "runs": runs,
              "identical": ok, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                           "python": platform.python_version(), "java": _java_version()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"identical={ok}; wrote {out}")
    return 0 if ok else 1


def _java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (out.stderr or out.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unavailable"


if __name__ == "__main__":
    sys.exit(main())
