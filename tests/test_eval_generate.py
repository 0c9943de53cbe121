"""eval/run.py generate, its journal (kill and restart), sharding over processes, reproduce.

Tiny random models on the shapes test split. METEOR is left out (--metrics) so no test here
waits for its JVM; the PTB tokenizer still runs, as in a real eval.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval import journal as jr
from eval.run import main

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["Bleu", "ROUGE_L", "CIDEr"]
# 8 images in batches of 2: four batches, so a kill can land between them.
N_IMAGES, N_BATCHES = 8, 4
BASE = ["--split", "test", "--max-images", str(N_IMAGES), "--batch-size", "2", "--max-new-tokens", "8",
        "--no-progress", "--metrics", *METRICS]


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--dataset", str(data), "--out", str(out), *BASE, *extra]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_models, shapes_dir):
    """One uninterrupted single-process run: the run every other one must equal."""
    out = tmp_path_factory.mktemp("eval") / "reference"
    assert main(_args(tiny_models["idefics3"], shapes_dir, out)) == 0
    return out


def _error_line(err: str) -> str:
    """The error is one line (the last on stderr, after any progress output), no traceback."""
    assert "Traceback" not in err, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_generate_writes_predictions_metrics_and_report(reference_run, shapes_dir, tiny_models):
    from captioning.data import load_captions
    from eval import scoring

    preds = _load(reference_run / "predictions.json")
    ds = load_captions(str(shapes_dir), "test", max_samples=N_IMAGES)
    assert [p["image_id"] for p in preds] == [ex.image_id for ex in ds]
    assert all(isinstance(p["caption"], str) and p["caption"].strip() for p in preds)
    assert not list(reference_run.glob("predictions.partial*"))  # journal removed when done

    rec = _load(reference_run / "metrics.json")
    # generate -> score: metrics.json holds exactly what scoring the written files gives
    again = scoring.score(ds.references_coco(), preds, metrics=METRICS)
    assert rec["metrics"] == again["metrics"]
    assert set(rec["metrics"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert rec["n_images"] == N_IMAGES
    # the shapes set records each image's objects: scene accuracy of the same captions, beside the COCO metrics
    from eval.scene import scene_accuracy

    scenes = ds.scenes()
    assert scenes is not None and len(scenes) == N_IMAGES
    want = scene_accuracy(scenes, preds)
    per_scene = want.pop("per_image")
    assert rec["scene_accuracy"] == want and want["n_images"] == N_IMAGES
    # provenance (issue 4 item 3)
    assert rec["dataset"]["source"] == str(shapes_dir) and rec["dataset"]["split"] == "test"
    assert rec["dataset"]["hash"] == ds.content_hash()
    assert rec["model"]["path"] == str(tiny_models["idefics3"].resolve())
    assert len(rec["model"]["content_hash"]) == 64 and rec["model"]["family"] == "idefics3"
    assert rec["prompt"] == "Give a concise caption."
    assert rec["generation"]["max_new_tokens"] == 8 and rec["generation"]["num_beams"] == 1
    assert rec["batch_size"] == 2 and rec["dtype"] == "float32" and rec["device"] == "cpu"
    for lib in ("torch", "transformers", "peft", "pycocoevalcap", "java"):
        assert rec["versions"][lib], lib
    assert rec["command"].startswith("python eval/run.py generate --model ")
    assert rec["created"].endswith("Z") and rec["seconds"] > 0
    assert rec["fingerprint"]["sha256"] == jr.fingerprint(rec["fingerprint"]["settings"])

    html = (reference_run / "report.html").read_text(encoding="utf-8")
    assert html.count('class="row"') == N_IMAGES and html.count("data:image/jpeg;base64,") == N_IMAGES
    cider = [float(v) for v in re.findall(r'data-cider="([^"]+)"', html)]
    assert cider == sorted(cider)  # worst first
    assert "http://" not in html and "https://" not in html and "<script" not in html
    # scene accuracy: the corpus numbers beside the metrics, and in every row what its caption got right and wrong
    assert "<h2>Scene accuracy (shapes)" in html
    assert f'<td>exact object set (share of captions)</td><td class="v">{want["exact"]:.4f}</td>' in html
    assert f'<td>object recall (image objects named)</td><td class="v">{want["object_recall"]:.4f}' in html
    rows = re.findall(r'<div class="row" data-image-id="(\d+)"[^>]*data-scene-exact="(\d)">(.*?)</div></div>\n', html)
    assert len(rows) == N_IMAGES
    for image_id, exact, body in rows:
        got = per_scene[int(image_id)]
        assert exact == str(int(got["exact"])) and f"scene exact {'yes' if got['exact'] else 'no'}" in body
        assert f"objects P {got['object_precision']:.4f}" in body and f"objects R {got['object_recall']:.4f}" in body
        assert ("missing: " + ", ".join(got["missing"]) in body) is bool(got["missing"])
        assert ("not in the image: " + ", ".join(got["extra"]) in body) is bool(got["extra"])


def test_report_names_what_a_caption_got_wrong_about_its_scene():
    """A row of a shapes eval says exact yes/no, object precision/recall and the objects missed
    or made up; a row without a scene (another dataset) shows none of it."""
    from eval.report import render_report
    from eval.scene import score_caption

    scene = [{"shape": "diamond", "color": "black", "size": "large", "row": 0, "col": 0},
             {"shape": "cross", "color": "purple", "size": "large", "row": 2, "col": 1}]
    rows = [{"image_id": i, "file_name": f"{i}.png", "prediction": cap, "references": ["r"], "scores": {"CIDEr": 0.5},
             "thumb": None, "scene": score_caption(cap, scene).as_dict()}
            for i, cap in ((1, "a black diamond and a small purple diamond"),
                           (2, "a black diamond above a purple cross"))]
    record = {"metrics": {"CIDEr": 0.5}, "scene_accuracy": {"exact": 0.5, "object_precision": 0.75,
                                                             "object_recall": 0.5, "count": 1.0, "relation": None,
                                                             "n_images": 2}}
    html = render_report(record, rows)
    wrong, right = html.split('data-image-id="2"')
    assert 'data-scene-exact="0"' in wrong and "scene exact no" in wrong and "objects P 0.5000" in wrong
    assert "missing: large purple cross; not in the image: small purple diamond" in wrong
    assert 'data-scene-exact="1"' in right and "scene exact yes" in right and "missing" not in right
    assert '<td>stated relations that hold</td><td class="v">n/a <span class="muted">(no caption states one)' in html
    for row in rows:
        del row["scene"]
    plain = render_report({"metrics": {"CIDEr": 0.5}}, rows)
    assert "scene" not in plain.lower() and "missing" not in plain


def test_dataset_without_scenes_has_no_scene_accuracy(tmp_path, tiny_models, shapes_dir):
    """The same images as a plain COCO captions file (no images[].shapes): metrics.json and
    report.html carry no scene accuracy at all."""
    refs = _load(shapes_dir / "annotations" / "captions_test.json")
    for im in refs["images"]:
        im.pop("shapes")
    plain = tmp_path / "captions_test.json"
    plain.write_text(json.dumps(refs))
    out = tmp_path / "run"
    assert main(["generate", "--model", str(tiny_models["blip"]), "--dataset", str(plain), "--images-dir",
                 str(shapes_dir / "images"), "--split", "test", "--max-images", "2", "--batch-size", "2",
                 "--max-new-tokens", "4", "--no-progress", "--metrics", *METRICS, "--out", str(out)]) == 0
    assert "scene_accuracy" not in _load(out / "metrics.json")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('class="row"') == 2
    assert "Scene accuracy" not in html and "data-scene-exact" not in html and "scene exact" not in html


def test_train_config_prompt_is_used_and_recorded(tmp_path, tiny_models, shapes_dir):
    model = tmp_path / "trained"
    shutil.copytree(tiny_models["idefics3"], model)
    (model / "train_config.yaml").write_text("model:\n  family: idefics3\ndata:\n  prompt: Describe the shapes.\n")
    out = tmp_path / "run"
    assert main(_args(model, shapes_dir, out, "--max-images", "2", "--no-report")) == 0
    assert _load(out / "metrics.json")["prompt"] == "Describe the shapes."
    out2 = tmp_path / "run2"
    assert main(_args(model, shapes_dir, out2, "--max-images", "2", "--no-report", "--prompt", "What is it?")) == 0
    assert _load(out2 / "metrics.json")["prompt"] == "What is it?"


def test_killed_run_resumes_to_identical_files(tmp_path, reference_run, tiny_models, shapes_dir, capsys):
    out = tmp_path / "killed"
    args = _args(tiny_models["idefics3"], shapes_dir, out)
    proc = subprocess.Popen([sys.executable, str(ROOT / "eval" / "run.py"), *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / jr.JOURNAL
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b"\n") >= 2:  # header + a batch
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = jr.read_journal(journal)
    assert 1 <= len(done.batches) < N_BATCHES and not (out / "predictions.json").exists()
    # a kill mid-write leaves a torn line: it must be dropped, not break the resume
    with open(journal, "ab") as f:
        f.write(b'{"batch": 3, "image_ids": [20000007, 200')

    # other settings into the same --out: refused, one line, nothing mixed
    capsys.readouterr()
    assert main(_args(tiny_models["idefics3"], shapes_dir, out, "--num-beams", "2")) == 2
    err = _error_line(capsys.readouterr().err)
    assert "num_beams: 1 -> 2" in err and "--overwrite" in err

    assert main(args) == 0
    rec = _load(out / "metrics.json")
    assert rec["timing"]["images_resumed"] == 2 * len(done.batches)
    assert rec["timing"]["images_captioned"] == N_IMAGES - 2 * len(done.batches)
    assert (out / "predictions.json").read_bytes() == (reference_run / "predictions.json").read_bytes()
    ref = _load(reference_run / "metrics.json")
    assert rec["metrics"] == ref["metrics"] and rec["fingerprint"] == ref["fingerprint"]
    assert not journal.exists()

    # finished run + other settings: refused; same settings: predictions reused, not regenerated
    assert main(_args(tiny_models["idefics3"], shapes_dir, out, "--max-new-tokens", "9")) == 2
    assert "max_new_tokens: 8 -> 9" in capsys.readouterr().err
    assert main(args) == 0
    assert _load(out / "metrics.json")["timing"]["images_captioned"] == 0
    assert (out / "predictions.json").read_bytes() == (reference_run / "predictions.json").read_bytes()


def test_journal_damage_in_the_middle_keeps_the_batches_before_it(tmp_path):
    """Finished captions are never thrown away (nor is deleting them advised) for a damaged
    line after them: the batches before it are kept, the rest captioned again."""
    path = tmp_path / jr.JOURNAL
    head = ('{"journal": 1, "fingerprint": "x", "settings": {}}\n{"batch": 0, "image_ids": [1], '
            '"captions": ["a"]}\n')
    path.write_text(head + 'not json\n{"batch": 1, "image_ids": [2], "captions": ["b"]}\n')
    notes = []
    j = jr.read_journal(path, log=notes.append)
    assert list(j.batches) == [0] and j.intact_bytes == len(head)
    assert len(notes) == 1 and "line 3 is damaged" in notes[0] and "delete" not in notes[0]
    path.write_text('{"journal": 1, "fingerprint": "x", "settings": {}}\n{"batch": 0, "image_ids": [1], '
                    '"captions": ["a"]}\n{"batch": 1, "ima')
    j = jr.read_journal(path)
    assert list(j.batches) == [0] and j.intact_bytes == len(path.read_bytes()) - len('{"batch": 1, "ima')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_sharded_run_equals_one_process(tmp_path, reference_run, tiny_models, shapes_dir):
    out = tmp_path / "sharded"
    # On a machine without GPUs accelerate starts several processes only with --multi_gpu;
    # eval/generate.py then initialises gloo on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(ROOT / "eval" / "run.py"),
           *_args(tiny_models["idefics3"], shapes_dir, out)]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    rec, ref = _load(out / "metrics.json"), _load(reference_run / "metrics.json")
    assert rec["timing"]["processes"] == 2
    assert (out / "predictions.json").read_bytes() == (reference_run / "predictions.json").read_bytes()
    for key in ("metrics", "n_images", "dataset", "generation", "prompt", "fingerprint", "unavailable"):
        assert rec[key] == ref[key], key
    assert not list(out.glob("predictions.partial*"))


# --------------------------------------------------------------------------- reproduce


@pytest.fixture(scope="module")
def release_once(tmp_path_factory, tiny_models, shapes_dir):
    """A local release folder: model files + the metrics.json its eval wrote."""
    tmp = tmp_path_factory.mktemp("release")
    folder = tmp / "release"
    shutil.copytree(tiny_models["blip"], folder)
    run = tmp / "eval-run"
    assert main(["generate", "--model", str(folder), "--dataset", str(shapes_dir), "--split", "test",
                 "--max-images", "6", "--batch-size", "3", "--max-new-tokens", "6", "--no-progress",
                 "--no-report", "--metrics", *METRICS, "--out", str(run)]) == 0
    shutil.copy(run / "metrics.json", folder / "metrics.json")
    return folder


@pytest.fixture()
def release(release_once, tmp_path):
    """A fresh copy of the release folder (tests alter its metrics.json)."""
    return Path(shutil.copytree(release_once, tmp_path / "release"))


def test_reproduce_passes_on_unchanged_release_and_fails_on_altered_numbers(release, tmp_path, capsys):
    assert main(["reproduce", str(release), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reproduced: all 6 metrics agree within 0.005" in out
    assert "CIDEr" in out and "recorded" in out and "reproduced" in out

    rec = _load(release / "metrics.json")
    rec["metrics"]["CIDEr"] += 0.05
    (release / "metrics.json").write_text(json.dumps(rec))
    kept = tmp_path / "reproduced"
    assert main(["reproduce", str(release), "--no-progress", "--out", str(kept)]) == 1
    assert "NOT reproduced: CIDEr differs by -0.0500" in capsys.readouterr().out
    assert (kept / "metrics.json").is_file() and (kept / "predictions.json").is_file()
    # a looser tolerance accepts it (the kept run is re-scored, not captioned again)
    assert main(["reproduce", str(release), "--no-progress", "--tolerance", "0.06", "--out", str(kept)]) == 0


def test_reproduce_checks_a_subset_against_recorded_predictions(release, release_once, capsys):
    shutil.copy(release_once.parent / "eval-run" / "predictions.json", release / "predictions.json")
    assert main(["reproduce", str(release), "--max-images", "3", "--no-progress", "--metrics", "Bleu_4",
                 "CIDEr"]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "identical captions: 3/3" in out
    assert "reproduced: all 2 metrics agree" in out


def test_reproduce_cannot_run_exits_2(release, tmp_path, shapes_dir, capsys):
    rec = _load(release / "metrics.json")
    # the recorded dataset is gone
    moved = tmp_path / "elsewhere"
    bad = dict(rec, dataset=dict(rec["dataset"], source=str(moved), path=str(moved)))
    (release / "metrics.json").write_text(json.dumps(bad))
    assert main(["reproduce", str(release)]) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("error: cannot reproduce: the recorded dataset is not available here")
    # other references than recorded
    bad = dict(rec, dataset=dict(rec["dataset"], hash="0" * 64))
    (release / "metrics.json").write_text(json.dumps(bad))
    assert main(["reproduce", str(release)]) == 2
    assert "holds other references than the recorded eval" in capsys.readouterr().err
    # a subset check needs the recorded predictions
    (release / "metrics.json").write_text(json.dumps(rec))
    assert main(["reproduce", str(release), "--max-images", "2"]) == 2
    assert "needs the recorded predictions.json" in capsys.readouterr().err
    # no metrics.json / a hub id while offline
    (release / "metrics.json").unlink()
    assert main(["reproduce", str(release)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    assert main(["reproduce", "someone/not-cached-model"]) == 2
    assert "cannot reproduce" in capsys.readouterr().err


def test_generate_errors_are_one_line(tmp_path, tiny_models, shapes_dir, capsys):
    cases = [
        (_args(tmp_path / "no-model", shapes_dir, tmp_path / "o1"), "no such folder"),
        (_args(tiny_models["blip"], tmp_path / "no-data", tmp_path / "o2"), "no-data"),
        (["generate", "--model", str(tiny_models["blip"]), "--dataset", str(shapes_dir), "--split", "nope",
          "--out", str(tmp_path / "o3")], "splits found"),
        (["generate", "--model", "x", "--dataset", "y", "--split", "test", "--out", "z", "--batch-size", "0"],
         "--batch-size"),
        (["generate", "--model", "x", "--dataset", "y", "--split", "test", "--out", "z", "--report-rows",
          "many"], "--report-rows: 'many' is not a whole number"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((_args(tiny_models["blip"], shapes_dir, tmp_path / "file"), "is a file"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in _error_line(capsys.readouterr().err)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """The test Hub server (tests/hubserver.py), with huggingface_hub pointed at it and online."""
    from huggingface_hub import constants

    from tests.hubserver import HubServer

    server = HubServer(tmp_path / "hub-state", token="hf_test").start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # httpx inside huggingface_hub's upload
def test_reproduce_from_a_hub_repo(hub, release_once, tmp_path, capsys):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("tester/tiny-blip")
    api.upload_folder(folder_path=str(release_once), repo_id="tester/tiny-blip")
    sha = api.model_info("tester/tiny-blip").sha
    kept = tmp_path / "reproduced"
    assert main(["reproduce", "tester/tiny-blip", "--no-progress", "--out", str(kept)]) == 0
    out = capsys.readouterr().out
    assert "model:   tester/tiny-blip" in out and "reproduced: all 6 metrics agree" in out
    model = _load(kept / "metrics.json")["model"]
    assert model["id"] == "tester/tiny-blip" and model["resolved_revision"] == sha and model["path"] is None
    assert main(["reproduce", "tester/no-such-repo"]) == 2
    assert "no such model repo" in _error_line(capsys.readouterr().err)


def test_empty_generated_captions_are_scored_and_listed_not_an_abort(tmp_path, tiny_models, shapes_dir, monkeypatch,
                                                                     capsys):
    """An empty caption is what the model said: scored as matching nothing (0 for that image),
    listed in metrics.json, never the end of a long run. score on a user's file still refuses
    one unless --allow-empty."""
    import captioning.generation as generation

    real = generation.caption_images

    def some_empty(captioner, images, *a, **kw):
        out = real(captioner, images, *a, **kw)
        return [[""]] + out[1:]

    monkeypatch.setattr(generation, "caption_images", some_empty)
    out = tmp_path / "run"
    assert main(["generate", "--model", str(tiny_models["blip"]), "--dataset", str(shapes_dir), "--split", "test",
                 "--max-images", "4", "--batch-size", "2", "--max-new-tokens", "4", "--no-progress",
                 "--metrics", *METRICS, "--out", str(out)]) == 0
    assert "2 of 4 captions are empty" in capsys.readouterr().err
    record = _load(out / "metrics.json")
    assert record["empty_captions"] == [20000001, 20000003] and record["n_images"] == 4
    preds = _load(out / "predictions.json")
    assert [p["caption"] for p in preds][::2] == ["", ""]
    refs = str(shapes_dir / "annotations" / "captions_test.json")
    assert main(["score", "--references", refs, "--predictions", str(out / "predictions.json"),
                 "--allow-missing", "--metrics", "CIDEr"]) == 2
    assert "is empty or whitespace-only" in _error_line(capsys.readouterr().err)
    assert main(["score", "--references", refs, "--predictions", str(out / "predictions.json"),
                 "--allow-missing", "--allow-empty", "--metrics", "CIDEr", "Bleu", "ROUGE_L",
                 "--per-image", str(tmp_path / "per.json")]) == 0
    per = {r["image_id"]: r for r in _load(tmp_path / "per.json")}
    assert per[20000001]["CIDEr"] == 0 and per[20000001]["ROUGE_L"] == 0 and per[20000001]["Bleu_1"] < 1e-6


def test_styled_references_are_recorded_compared_apart_and_reproduced(tiny_models, shapes_dir, tmp_path, capsys):
    """--caption-transform scores against references in a fine-tune's style: the record says
    so (and carries their own hash), compare refuses to line it up with a plain-reference
    number, and reproduce rewrites the references the same way."""
    folder = tmp_path / "release"
    shutil.copytree(tiny_models["blip"], folder)
    common = ["--dataset", str(shapes_dir), "--split", "test", "--max-images", "4", "--batch-size", "2",
              "--max-new-tokens", "6", "--no-progress", "--no-report", "--metrics", *METRICS]
    assert main(["generate", "--model", str(folder), *common, "--out", str(tmp_path / "plain")]) == 0
    assert main(["generate", "--model", str(folder), *common, "--caption-transform", "linguistic_errors",
                 "--out", str(tmp_path / "styled")]) == 0
    plain, styled = _load(tmp_path / "plain" / "metrics.json"), _load(tmp_path / "styled" / "metrics.json")
    assert styled["kind"] == "eval" and styled["dataset"]["caption_transform"] == "linguistic_errors"
    assert plain["dataset"]["caption_transform"] == "none" and plain["dataset"]["hash"] != styled["dataset"]["hash"]
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "plain"), str(tmp_path / "styled")]) == 0
    assert "not comparable with plain (other references, caption transform linguistic_errors vs none)" in \
        capsys.readouterr().out
    shutil.copy(tmp_path / "styled" / "metrics.json", folder / "metrics.json")
    assert main(["reproduce", str(folder), "--no-progress"]) == 0
    assert "reproduced: all 6 metrics agree" in capsys.readouterr().out


def test_unreadable_images_stop_the_run_or_are_skipped_by_choice(tiny_models, shapes_dir, tmp_path, capsys):
    """Strict by default: the first unreadable image stops the run, naming it, and the run
    resumes once it is fixed. With --skip-bad-images the run finishes: every skipped image is
    listed with its reason (metrics.json, report), n_images counts the scored ones."""
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    files = sorted((data / "images" / "test").glob("*.png"))[:8]
    originals = {f: f.read_bytes() for f in files}
    for f in (files[3], files[4], files[6]):
        f.write_bytes(originals[f][:40])  # a truncated PNG
    args = ["generate", "--model", str(tiny_models["blip"]), "--dataset", str(data), "--split", "test",
            "--max-images", "8", "--batch-size", "2", "--max-new-tokens", "4", "--no-progress", "--metrics",
            *METRICS]
    strict = tmp_path / "strict"
    assert main([*args, "--out", str(strict)]) == 2
    err = _error_line(capsys.readouterr().err)
    assert files[3].name in err and "--skip-bad-images" in err
    assert not (strict / "metrics.json").exists() and (strict / jr.JOURNAL).is_file()  # batch 0 was kept
    for f in files:
        f.write_bytes(originals[f])
    assert main([*args, "--out", str(strict)]) == 0
    assert "resuming, 2/8 images already captioned" in capsys.readouterr().err
    assert _load(strict / "metrics.json")["n_images"] == 8

    for f in (files[3], files[4], files[6]):
        f.write_bytes(originals[f][:40])
    skip = tmp_path / "skip"
    assert main([*args, "--skip-bad-images", "--out", str(skip)]) == 0
    record = _load(skip / "metrics.json")
    assert record["n_images"] == 5 and len(_load(skip / "predictions.json")) == 5
    assert [s["file"] for s in record["skipped_images"]] == [f"test/{f.name}" for f in (files[3], files[4], files[6])]
    assert all(f.name in s["reason"] for s, f in zip(record["skipped_images"], (files[3], files[4], files[6])))
    assert files[4].name in (skip / "report.html").read_text()
    # the finished run, asked again, scores its predictions again with the same skipped images
    assert main([*args, "--skip-bad-images", "--out", str(skip)]) == 0
    assert _load(skip / "metrics.json")["skipped_images"] == record["skipped_images"]
