"""eval/run.py score / compare and report.html, without models.

One METEOR JVM for the whole file (a module-scoped Scorer handed to main()); the error
cases fail before any JVM starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval import scoring
from eval.compare import load_run
from eval.report import order_rows, render_report
from eval.run import main, references_hash

WORDS = ["a", "dog", "cat", "Red", "blue", "car", "on", "the", "street", "café", "naïve", "2", "12",
         "people", "sitting", "near", "table", "ÉCOLE", "über", "x-ray"]


def _caption(rng, n):
    words = [rng.choice(WORDS) for _ in range(n)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", "!", " ,", "", "..."])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A few dozen synthetic images x 5 references with punctuation, case, digits, non-ASCII."""
    import random

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("score")
    ids = list(range(1, 41))
    refs = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in ids],
            "annotations": [{"image_id": i, "caption": _caption(rng, rng.randint(5, 12)), "id": 5 * i + k}
                            for i in ids for k in range(5)]}
    preds = [{"image_id": i, "caption": _caption(rng, rng.randint(4, 10))} for i in ids]
    (root / "refs.json").write_text(json.dumps(refs, ensure_ascii=False), encoding="utf-8")
    (root / "preds.json").write_text(json.dumps(preds, ensure_ascii=False), encoding="utf-8")
    return root, refs, preds


@pytest.fixture(scope="module")
def scorer():
    with scoring.Scorer(meteor_jvms=1) as s:  # one JVM: the file shares it
        yield s


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_score_cli_equals_scoring_score(files, scorer, capsys, tmp_path):
    root, refs, preds = files
    out, per = tmp_path / "metrics.json", tmp_path / "per_image.json"
    assert main(["score", "--references", str(root / "refs.json"), "--predictions", str(root / "preds.json"),
                 "--out", str(out), "--per-image", str(per)], scorer=scorer) == 0
    direct = scoring.score(refs, preds, scorer=scorer)
    rec = json.loads(out.read_text())
    assert rec["metrics"] == direct["metrics"]  # exactly: same floats
    assert rec["metrics"]["SPICE"] is None and rec["unavailable"]["SPICE"]  # recorded, with the reason
    assert rec["extras"]["sacreBLEU_corpus_0_100"] == direct["extras"]["sacreBLEU_corpus_0_100"]
    assert rec["n_images"] == 40 and rec["command"].startswith("python eval/run.py score ")
    assert rec["versions"]["java"] and rec["created"].endswith("Z")
    rows = json.loads(per.read_text())
    assert {r["image_id"]: r["CIDEr"] for r in rows} == {k: v["CIDEr"] for k, v in direct["per_image"].items()}
    table = capsys.readouterr().out
    assert f"CIDEr    {direct['metrics']['CIDEr']:.4f}" in table and "METEOR" in table

    assert main(["score", "--references", str(root / "refs.json"), "--predictions", str(root / "preds.json"),
                 "--no-tokenize", "--metrics", "Bleu,CIDEr", "--out", str(out)]) == 0
    untok = scoring.score(refs, preds, tokenize=False, metrics=["Bleu", "CIDEr"])
    assert json.loads(out.read_text())["metrics"] == untok["metrics"]
    assert json.loads(out.read_text())["scoring"]["tokenize"] is False


def test_references_hash_matches_the_dataset_hash(shapes_dir):
    from captioning.data import load_captions

    refs = json.loads((shapes_dir / "annotations" / "captions_test.json").read_text())
    assert references_hash(refs) == load_captions(str(shapes_dir), "test").content_hash()


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def test_score_errors_are_one_line(files, tmp_path, capsys, monkeypatch):
    root, refs, preds = files
    R = str(root / "refs.json")
    fast = ["--no-tokenize", "--metrics", "Bleu_1"]  # validation errors come before any JVM

    def run(preds_obj, *extra, refs_path=R, name="p.json"):
        p = _write(tmp_path / name, preds_obj)
        code = main(["score", "--references", refs_path, "--predictions", str(p), *extra])
        return code, capsys.readouterr()

    cases = [
        (preds + [{"image_id": 999, "caption": "a dog"}], "image id 999 has no references"),
        (preds[:-3], "3 of 40 referenced images have no prediction"),
        (preds + [{"image_id": 1, "caption": "again"}], "2 predictions for image id 1"),
        ([dict(p, caption="  ") if p["image_id"] == 7 else p for p in preds], "image id 7 is empty"),
        ('[{"image_id": 1, "caption": "a"},\n  {"image_id": 2 "caption": "b"}]', "not valid JSON: Expecting ',' "
                                                                                 "delimiter at line 2 column 18"),
        (refs, "must be a COCO results list"),
    ]
    for obj, needle in cases:
        code, cap = run(obj, *fast)
        assert code == 2 and needle in _error_line(cap.err), (needle, cap.err)
        assert cap.out == ""

    # --allow-missing scores the predicted subset and says so
    code, cap = run(preds[:-3], *fast, "--allow-missing")
    assert code == 0 and "n_images=37" in cap.out and "scored only the 37 images" in cap.out

    code, cap = run(preds, *fast, refs_path=str(tmp_path / "missing.json"))
    assert code == 2 and "references file not found" in _error_line(cap.err)
    code, cap = run(preds, *fast, "--out", str(tmp_path))
    assert code == 2 and "is a folder" in _error_line(cap.err)
    code, cap = run(preds, "--metrics", "BLEURT")
    assert code == 2 and "unknown metric 'BLEURT'" in _error_line(cap.err)
    assert main(["score", "--predictions", "x.json"]) == 2
    assert "--references" in _error_line(capsys.readouterr().err)

    # Java missing: say how to install it
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    scoring._java.cache_clear()
    try:
        code, cap = run(preds, "--metrics", "Bleu_1")
    finally:
        monkeypatch.undo()
        scoring._java.cache_clear()
    assert code == 2
    line = _error_line(cap.err)
    assert "Java not found" in line and "apt-get install default-jre-headless" in line


def _record(metrics, *, hash_="a" * 64, n=10, model="m/one", tokenize=True):
    return {"metrics": metrics, "n_images": n, "model": {"id": model, "adapter": None},
            "dataset": {"source": "data/shapes", "split": "test", "hash": hash_},
            "scoring": {"tokenize": tokenize}}


def test_compare_flags_runs_that_are_not_comparable(tmp_path, capsys):
    m = {"Bleu_4": 0.25, "METEOR": 0.2, "CIDEr": 0.9, "SPICE": None}
    (tmp_path / "base").mkdir()
    _write(tmp_path / "base" / "metrics.json", _record(m))
    _write(tmp_path / "lora.json", _record(dict(m, CIDEr=1.1), model="m/lora"))
    _write(tmp_path / "other.json", _record(m, hash_="b" * 64))
    _write(tmp_path / "fewer.json", _record(m, n=8))
    paths = [str(tmp_path / p) for p in ("base", "lora.json", "other.json", "fewer.json")]

    assert main(["compare", *paths]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["run", "model", "dataset", "n_images", "refs"]
    assert re.search(r"^lora\s+m/lora\s+data/shapes:test\s+10\s+aaaaaaaaaa\s+0\.2500\s+0\.2000\s+1\.1000\s+n/a",
                     out, re.M)
    assert "* other: not comparable with base (other references)" in out
    assert "* fewer: not comparable with base (n_images 8 vs 10)" in out
    assert "lora *" not in out and "other *" in out and "fewer *" in out

    assert main(["compare", *paths, "--markdown", "--metrics", "CIDEr"]) == 0
    md = capsys.readouterr().out
    assert "| run | model | dataset | n_images | refs hash | CIDEr |" in md
    assert "| lora | m/lora | data/shapes:test | 10 | aaaaaaaaaa | 1.1000 |" in md
    assert "| other * |" in md

    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "no such file" in _error_line(capsys.readouterr().err)
    assert [r.name for r in map(load_run, paths)] == ["base", "lora", "other", "fewer"]


def test_report_orders_worst_first_and_keeps_both_ends(tmp_path):
    rows = [{"image_id": i, "file_name": f"{i}.png", "prediction": f"caption <{i}>", "references": ["r & s"],
             "scores": {"CIDEr": (i * 7) % 11 / 10, "Bleu_4": 0.1}, "thumb": None} for i in range(30)]
    ordered = order_rows(rows, "CIDEr")
    assert [r["scores"]["CIDEr"] for r in ordered] == sorted(r["scores"]["CIDEr"] for r in rows)
    html = render_report({"metrics": {"CIDEr": 0.5, "SPICE": None}, "unavailable": {"SPICE": "needs Java 8"},
                          "n_images": 30, "model": {"id": "m"}}, ordered, shown=5)
    assert html.count('class="row"') == 10 and "20 images in between not shown" in html
    assert "caption &lt;" in html and "r &amp; s" in html  # escaped
    assert "needs Java 8" in html and 'id="order-best"' in html
    shown = [float(v) for v in re.findall(r'data-cider="([^"]+)"', html)]
    assert shown == sorted(shown) and shown[0] == ordered[0]["scores"]["CIDEr"]
    assert shown[-1] == ordered[-1]["scores"]["CIDEr"]


def test_generate_flags_are_the_config_fields():
    """generate's flags come from GenerateConfig and GenerationSettings (help written once, in
    the dataclasses), with the spellings the README and scripts use."""
    import argparse
    import dataclasses

    from captioning.generation import GenerationSettings
    from eval.generate import GenerateConfig
    from eval.run import build_parser, generate_config

    base = ["generate", "--model", "m", "--dataset", "d", "--split", "test", "--out", "o"]
    assert generate_config(build_parser().parse_args(base)) == GenerateConfig(model="m", dataset="d", split="test",
                                                                             out="o")
    cfg = generate_config(build_parser().parse_args(base + [
        "--batch-size", "4", "--num-beams", "3", "--skip-bad-images", "--max-pixels", "1000", "--caption-transform",
        "linguistic_errors", "--metrics", "Bleu_4,CIDEr", "METEOR", "--no-report", "--no-tokenize",
        "--no-image-splitting", "--sample", "--seed", "7", "--max-new-tokens", "9", "--image-longest-edge", "64"]))
    assert (cfg.batch_size, cfg.generation.num_beams, cfg.max_pixels, cfg.image_longest_edge) == (4, 3, 1000, 64)
    assert cfg.skip_bad_images and cfg.caption_transform == "linguistic_errors"
    assert cfg.metrics == ["Bleu_4", "CIDEr", "METEOR"] and not cfg.report and not cfg.tokenize
    assert cfg.image_splitting is False and cfg.generation.max_new_tokens == 9
    assert cfg.generation.do_sample and cfg.generation.seed == cfg.seed == 7  # --seed seeds --sample too

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    helps = {a.dest: a.help for a in sub._actions}
    for cls in (GenerateConfig, GenerationSettings):
        for f in dataclasses.fields(cls):
            if "help" in f.metadata:
                assert helps[f.name] == f.metadata["help"], f.name


def test_eval_run_as_a_script_shadows_no_module():
    """`python eval/run.py` puts eval/ first on sys.path (the script does not edit it): no
    module or package there may share a name with one importable from anywhere else."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "eval"
    names = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()
                                                      or p.is_dir() and any(p.glob("*.py"))}
    assert {"run", "scoring", "generate"} <= names
    clashing = [n for n in sorted(names - {"__init__"})
                if n in sys.stdlib_module_names or importlib.util.find_spec(n) is not None]
    assert not clashing, f"eval/ modules that would shadow importable ones: {clashing}"


def test_a_failed_revision_look_up_is_recorded_as_such(monkeypatch):
    """A hub model whose commit could not be found is recorded with why, not as a model that
    has no revision (None alone)."""
    import huggingface_hub

    from captioning import loading
    from eval import provenance

    monkeypatch.setattr(loading, "resolve_revision", lambda repo, rev: None)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    sha, why = provenance.hub_commit("org/model", None)
    assert sha is None and "cache holds no snapshot" in why
    monkeypatch.setattr(loading, "resolve_revision", lambda repo, rev: "abc123")
    assert provenance.hub_commit("org/model", None) == ("abc123", None)
