"""release push / release space against a local Hub-compatible server (tests/hubserver.py)."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from release.card import usage_snippet
from release.cli import cli

from .conftest import NEW_TOKENS, TOKEN

REPO = Path(__file__).resolve().parents[2]


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    return result, result.output  # click >= 8.2: stdout and stderr, as a terminal shows them


def eval_dir(tmp_path: Path, model: Path, adapter: Path | None = None) -> Path:
    """What eval/run.py generate leaves in --out (metrics.json + predictions.json), as if it
    had captioned with ``model`` (+ ``adapter``): the record names their weights."""
    from captioning.fingerprints import weights_fingerprint

    d = tmp_path / "eval"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "model": {"id": str(model), "path": str(model.resolve()), "weights_fingerprint": weights_fingerprint(model),
                  "adapter": str(adapter.resolve()) if adapter else None,
                  "adapter_fingerprint": weights_fingerprint(adapter) if adapter else None},
        "command": f"python eval/run.py generate --model {model} --dataset {tmp_path / 'shapes'} --out {d}",
        "metrics": {"Bleu_4": 0.1234, "CIDEr": 0.5678, "METEOR": 0.2, "ROUGE_L": 0.3, "SPICE": None},
        "unavailable": {"SPICE": f"needs Stanford CoreNLP in {REPO}/.venv/lib/pycocoevalcap/spice/lib"},
        "n_images": 16,
        "dataset": {"source": "data/shapes", "path": str(tmp_path.resolve() / "shapes"), "split": "test",
                    "n_images": 16, "hash": "abc123"},
        "prompt": "Give a concise caption.", "generation": {"max_new_tokens": NEW_TOKENS, "num_beams": 1},
        "created": "2026-11-23T00:00:00Z"}))
    (d / "predictions.json").write_text(json.dumps([{"image_id": 1, "caption": "a red circle"}]))
    return d


def assert_no_token(root: Path, *outputs: str) -> None:
    """The token appears in no captured output and in no file written under ``root``."""
    for out in outputs:
        assert TOKEN not in out
    needle = TOKEN.encode()
    for p in root.rglob("*"):
        if p.is_file():
            assert needle not in p.read_bytes(), f"token written to {p}"


def _caption_through_hub(family: str, repo_id: str, png: Path, prompt) -> str:
    """The card's transformers 5 snippet, run against the (local) Hub."""
    import contextlib
    import io

    buf = io.StringIO()
    code = usage_snippet(family, 5, repo_id, prompt, image=str(png), max_new_tokens=NEW_TOKENS)
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "snippet", "exec"), {"__name__": "__snippet__"})
    return re.sub(r"\s+", " ", buf.getvalue()).strip()


def test_push_merge_repush_tag_and_load_through_hub(hub, adapters, release_bases, prerelease_captions, probe_pngs,
                                                    tmp_path):
    ev = eval_dir(tmp_path, release_bases["idefics3"], adapters["idefics3"])
    args = ["push", "--repo-id", "ns/tiny-smolvlm", "--adapter", adapters["idefics3"], "--merge", "--eval", ev,
            "--token", TOKEN, "--tag", "v1", "--probes", "2"]
    r1, out1 = run(*args)
    assert r1.exit_code == 0, out1
    repo = hub.repo("ns/tiny-smolvlm")
    assert len(hub.commits) == 1 and repo["tags"]["v1"] == repo["branches"]["main"]
    assert f"commit: {repo['branches']['main']}" in out1 and f"{hub.url}/ns/tiny-smolvlm" in out1
    files = hub.files("ns/tiny-smolvlm")
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", "predictions.json", "merge_check.json",
            "train_config.yaml", "chat_template.jinja", "badges/CIDEr.svg", "loss_curve.png"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert {r.metric_name: r.metric_value for r in card.data.eval_results}["CIDEr"] == 0.5678
    assert "python eval/run.py reproduce ns/tiny-smolvlm" in card.text

    # unchanged folder, pushed again (same tag): no new commit
    r2, out2 = run(*args)
    assert r2.exit_code == 0, out2
    assert "unchanged" in out2 and len(hub.commits) == 1

    # the published repo loads with AutoModelForImageTextToText.from_pretrained("ns/tiny-smolvlm")
    # through the server and captions exactly as base + adapter did before the release
    for i, png in enumerate(probe_pngs):
        got = _caption_through_hub("idefics3", "ns/tiny-smolvlm", png, "Give a concise caption.")
        assert got == re.sub(r"\s+", " ", prerelease_captions["idefics3"][i]).strip()
    assert any(a == f"Bearer {TOKEN}" for a in hub.seen_auth)  # the token was used ...
    assert_no_token(tmp_path, out1, out2)  # ... and never printed or written


def test_tag_conflict_revision_and_missing_token(hub, merged, adapters, tmp_path):
    args = ["push", "--repo-id", "ns/blip", "--model", merged["blip"], "--token", TOKEN]
    r, out = run(*args, "--tag", "v1")
    assert r.exit_code == 0, out
    first = hub.repo("ns/blip")["branches"]["main"]
    # a changed release cannot move an existing tag
    r, out = run(*args, "--eval", eval_dir(tmp_path, merged["blip"]), "--tag", "v1")
    assert r.exit_code == 2 and "error: --tag v1 already names commit" in out
    assert hub.repo("ns/blip")["tags"]["v1"] == first
    # a branch
    r, out = run(*args, "--revision", "dev", "--commit-message", "dev build")
    assert r.exit_code == 0, out
    repo = hub.repo("ns/blip")
    assert repo["commits"][repo["branches"]["dev"]]["message"] == "dev build"
    # no token anywhere: one line saying where to put it
    r, out = run("push", "--repo-id", "ns/blip", "--model", merged["blip"])
    assert r.exit_code == 2 and "no Hugging Face token" in out and len(out.strip().splitlines()) == 1
    # a wrong token: the server's refusal, in one line, without the token
    r, out = run("push", "--repo-id", "ns/other", "--model", merged["blip"], "--token", "hf_wrong_token")
    assert r.exit_code == 2 and "check the token" in out and "hf_wrong_token" not in out
    assert_no_token(tmp_path, out)


def test_push_deletes_what_the_release_no_longer_holds(hub, merged, tmp_path, caplog):
    """A release pushed again without --eval: one commit adds the new card and deletes the eval
    files and badges the repo held, and the summary counts exactly that; pushed once more, no
    commit and no library warning beside our own line."""
    args = ["push", "--repo-id", "ns/del", "--model", merged["blip"], "--token", TOKEN]
    r, out = run(*args, "--eval", eval_dir(tmp_path, merged["blip"]))
    assert r.exit_code == 0, out
    before = hub.files("ns/del")
    assert {"metrics.json", "predictions.json", "badges/CIDEr.svg"} <= set(before)
    n = len(hub.commits)
    r, out = run(*args)
    assert r.exit_code == 0, out
    after = hub.files("ns/del")
    assert len(hub.commits) == n + 1 and not {"metrics.json", "predictions.json", "badges/CIDEr.svg"} & set(after)
    changed = [p for p in after if before.get(p) != after[p]]
    assert f"pushed {len(changed)} changed file(s), removed {len(set(before) - set(after))}\n" in out
    repo = hub.repo("ns/del")
    assert repo["commits"][repo["branches"]["main"]]["message"] == "Release: upload folder"
    caplog.clear()
    r, out = run(*args)
    assert r.exit_code == 0 and "unchanged: the repo already holds this release" in out and len(hub.commits) == n + 1
    assert not [rec for rec in caplog.records if "modified since last commit" in rec.getMessage()]


def test_interrupted_push_finishes_when_run_again(hub, merged, adapters, tmp_path, monkeypatch):
    import huggingface_hub.lfs as lfs
    from huggingface_hub.utils import http_backoff

    # the client retries an LFS PUT five times (~25 s of back-off); the server is gone, so fail at once
    monkeypatch.setattr(lfs, "http_backoff", functools.partial(http_backoff, max_retries=0))
    puts = []

    def stop_on_second_put(handler, method, path, body):
        if method == "PUT" and path.startswith("/__lfs/"):
            puts.append(path)
            if len(puts) == 2:  # the server stops in the middle of the upload
                handler.close_connection = True
                hub.stop_soon()
                return False
        return True

    hub.before_request = stop_on_second_put
    args = ["push", "--repo-id", "ns/interrupted", "--model", merged["idefics3"], "--logs", adapters["idefics3"],
            "--token", TOKEN]
    r1, out1 = run(*args)
    assert r1.exit_code == 2, out1
    assert "interrupted" in out1 and "run the same command again" in out1 and len(out1.strip().splitlines()) <= 2
    assert hub.commits == []  # nothing half-committed
    stored_before = list(hub.lfs_puts)

    hub.before_request = None
    hub.start()  # the same port and the same stored state
    r2, out2 = run(*args)
    assert r2.exit_code == 0, out2
    assert len(hub.commits) == 1
    files = hub.files("ns/interrupted")
    assert {"model.safetensors", "loss_curve.png", "README.md"} <= set(files)
    # what the server already had was not sent again
    assert not set(stored_before) & set(hub.lfs_puts[len(stored_before):])
    assert_no_token(tmp_path, out1, out2)


def test_dry_run_touches_nothing_and_to_dir_matches_the_repo(hub, merged, tmp_path):
    r, out = run("push", "--repo-id", "ns/dry", "--model", merged["blip"], "--dry-run", "--token", TOKEN)
    assert r.exit_code == 0, out
    assert "dry run: would write to" in out and "model.safetensors" in out and "README.md" in out
    assert "nothing was written or uploaded" in out
    assert hub.requests == [] and hub.repo("ns/dry") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release")]

    local = tmp_path / "release"
    r, out = run("push", "--repo-id", "ns/dry", "--model", merged["blip"], "--to-dir", local)
    assert r.exit_code == 0, out
    assert hub.requests == []
    r, out = run("push", "--repo-id", "ns/dry", "--model", merged["blip"], "--to-dir", local)
    assert r.exit_code == 2 and "not empty: pass --force" in out
    r, out = run("push", "--repo-id", "ns/dry", "--model", merged["blip"], "--to-dir", local, "--force")
    assert r.exit_code == 0, out

    r, out = run("push", "--repo-id", "ns/dry", "--model", merged["blip"], "--token", TOKEN)
    assert r.exit_code == 0, out
    remote = hub.files("ns/dry")
    remote.pop(".gitattributes")
    here = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert here == remote  # --to-dir writes exactly what the Hub repo holds
    assert_no_token(tmp_path, out)


@pytest.fixture
def space_dir(tmp_path, monkeypatch):
    """space/ when it exists; otherwise a minimal placeholder app in the test's tmp dir."""
    import release.space as rs

    if (REPO / "space" / "app.py").is_file():
        return REPO / "space"
    d = tmp_path / "space-placeholder"
    (d / "examples").mkdir(parents=True)
    (d / "app.py").write_text("import gradio as gr\n")
    (d / "requirements.txt").write_text("transformers>=5\n")
    (d / "examples" / "a.txt").write_text("x")
    monkeypatch.setattr(rs, "SPACE_DIR", d)
    return d


def test_space_deploy(hub, space_dir, merged, tmp_path):
    import yaml

    args = ["space", "--repo-id", "ns/captioner", "--models", "ns/tiny-smolvlm;name=Fine-tuned,ns/tiny-blip",
            "--hardware", "cpu-basic", "--token", TOKEN]
    r, out = run(*args)
    assert r.exit_code == 0, out
    space = hub.repo("ns/captioner", "space")
    assert space["sdk"] == "gradio" and space["hardware"] == "cpu-basic"
    assert space["variables"]["CAPTION_MODELS"]["value"] == "ns/tiny-smolvlm;name=Fine-tuned,ns/tiny-blip"
    files = hub.files("ns/captioner", "space")
    assert {"app.py", "requirements.txt", "README.md", "models.yaml", "captioning/__init__.py",
            "captioning/loading.py"} <= set(files)
    assert files["app.py"] == (space_dir / "app.py").read_bytes()
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in files)
    meta = ModelCard(files["README.md"].decode()).data.to_dict()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["sdk_version"]
    assert meta["models"] == meta["preload_from_hub"] == ["ns/tiny-smolvlm", "ns/tiny-blip"]
    assert meta["suggested_hardware"] == "cpu-basic" and meta["python_version"] == "{}.{}".format(*sys.version_info)
    assert yaml.safe_load(files["models.yaml"])["models"] == ["ns/tiny-smolvlm;name=Fine-tuned", "ns/tiny-blip"]
    n = len(hub.commits)
    r, out = run(*args)
    assert r.exit_code == 0 and "unchanged" in out and len(hub.commits) == n

    # a local folder cannot be served by a Space on the Hub ...
    r, out = run("space", "--repo-id", "ns/captioner", "--models", merged["blip"], "--token", TOKEN)
    assert r.exit_code == 2 and "local folder" in out
    # ... but can by a local Space folder (made absolute, so it runs from anywhere)
    local = tmp_path / "space-out"
    r, out = run("space", "--repo-id", "ns/captioner", "--models", merged["blip"], "--to-dir", local)
    assert r.exit_code == 0, out
    assert yaml.safe_load((local / "models.yaml").read_text())["models"] == [str(merged["blip"].resolve())]
    assert "models" not in ModelCard((local / "README.md").read_text()).data.to_dict()
    assert (local / "app.py").is_file() and (local / "captioning" / "generation.py").is_file()
    assert_no_token(tmp_path, out)


def test_adapter_release_and_release_folder_pushed_again(adapters, merged, release_bases, probe_pngs,
                                                         prerelease_captions, tmp_path):
    """push --adapter without --merge releases the adapter (peft card + snippet that works);
    a release folder given as --model keeps its eval record."""
    out = tmp_path / "adapter-release"
    # an adapter of a local base cannot be used by anyone else: refused until the base has a Hub id
    r, text = run("push", "--repo-id", "ns/ad", "--adapter", adapters["blip"], "--to-dir", out)
    assert r.exit_code == 2 and "an adapter release needs its base on the Hub" in text and "--base-repo-id" in text
    assert not out.exists()
    r, text = run("push", "--repo-id", "ns/ad", "--adapter", adapters["blip"], "--base-repo-id", "ns/blip-base",
                  "--to-dir", out)
    assert r.exit_code == 0, text
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "train_config.yaml",
            "README.md", "loss_curve.png", "release.json"} <= names and "model.safetensors" not in names
    card = ModelCard((out / "README.md").read_text())
    assert card.data.library_name == "peft" and "PeftModel.from_pretrained(base, model_id)" in card.text
    assert card.data.base_model == "ns/blip-base" and card.data.base_model_relation == "adapter"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "ns/blip-base"
    code = usage_snippet("blip", 5, str(out), None, image=str(probe_pngs[0]), max_new_tokens=NEW_TOKENS,
                         adapter_of=str(release_bases["blip"]))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "snippet", "exec"), {"__name__": "__snippet__"})
    assert re.sub(r"\s+", " ", buf.getvalue()).strip() == prerelease_captions["blip"][0]

    first = tmp_path / "first"
    r, text = run("push", "--repo-id", "ns/b", "--model", merged["blip"], "--eval", eval_dir(tmp_path, merged["blip"]),
                  "--to-dir", first)
    assert r.exit_code == 0, text
    again = tmp_path / "again"
    r, text = run("push", "--repo-id", "ns/b", "--model", first, "--to-dir", again)
    assert r.exit_code == 0 and "using the eval record" in text
    assert {p.relative_to(first).as_posix(): p.read_bytes() for p in first.rglob("*") if p.is_file()} == \
        {p.relative_to(again).as_posix(): p.read_bytes() for p in again.rglob("*") if p.is_file()}


def test_push_refuses_an_eval_of_other_weights(adapters, release_bases, merged, tmp_path):
    """The base's eval passed with --adapter --merge (the measured case: the card claimed the
    base's CIDEr for the fine-tune): refused, naming both sides, and nothing is written."""
    base_eval = eval_dir(tmp_path / "b", release_bases["idefics3"])
    out = tmp_path / "release"
    r, text = run("push", "--repo-id", "ns/x", "--adapter", adapters["idefics3"], "--merge", "--eval", base_eval,
                  "--to-dir", out, "--probes", "2")
    assert r.exit_code == 2, text
    assert re.search(r"error: --eval .*measured weights [0-9a-f]{12}, not this release's weights [0-9a-f]{12} "
                     r"\(base [0-9a-f]{12} \+ adapter [0-9a-f]{12}\): evaluate the released model", text), text
    assert not out.exists()
    # a full model with another model's eval
    r, text = run("push", "--repo-id", "ns/x", "--model", merged["blip"], "--eval", base_eval, "--to-dir", out)
    assert r.exit_code == 2 and "not this release's weights" in text and not out.exists()
    # an eval record written before records carried fingerprints cannot vouch for any weights
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    rec = json.loads((base_eval / "metrics.json").read_text())
    rec["model"] = {"id": "x"}
    (legacy / "metrics.json").write_text(json.dumps(rec))
    r, text = run("push", "--repo-id", "ns/x", "--model", merged["blip"], "--eval", legacy, "--to-dir", out)
    assert r.exit_code == 2 and "records no weights fingerprint" in text and "run eval/run.py generate again" in text
    # the eval of this adapter on this base is accepted for its merge
    good = eval_dir(tmp_path / "g", release_bases["idefics3"], adapters["idefics3"])
    r, text = run("push", "--repo-id", "ns/x", "--adapter", adapters["idefics3"], "--merge", "--eval", good,
                  "--to-dir", out, "--probes", "2")
    assert r.exit_code == 0, text
    assert json.loads((out / "metrics.json").read_text())["metrics"]["CIDEr"] == 0.5678


def test_a_release_holds_no_local_path_and_pushed_again_renders_the_same_card(adapters, release_bases, tmp_path):
    """Every file of a merged release is scanned for the machine's paths; the release folder
    alone (no logs, no base folder) then re-renders the same card: loss curve included."""
    ev = eval_dir(tmp_path / "e", release_bases["idefics3"], adapters["idefics3"])
    first = tmp_path / "first"
    r, text = run("push", "--repo-id", "ns/tiny-style", "--adapter", adapters["idefics3"], "--merge", "--eval", ev,
                  "--to-dir", first, "--probes", "2")
    assert r.exit_code == 0, text
    local = [str(tmp_path), str(release_bases["idefics3"].parent), str(adapters["idefics3"].parent), str(REPO)]
    for p in first.rglob("*"):
        if p.is_file() and p.suffix != ".safetensors":
            body = p.read_bytes().decode("utf-8", errors="replace")
            assert not [s for s in local if s in body], (p.name, [s for s in local if s in body])
    card = ModelCard((first / "README.md").read_text())
    assert card.data.base_model is None  # a local base has no Hub id to link
    assert "fine-tuned from a local model (weights `" in card.text
    assert "loss_curve.png" in card.text and "training loss curve (no TensorBoard" not in card.text
    manifest = json.loads((first / "release.json").read_text())
    assert manifest["kind"] == "release" and manifest["base"]["local"] and manifest["loss"]["train"]
    assert manifest["lora_coverage"]["targeted"] == 14  # from the adapter's training record, for the card
    assert "| LoRA coverage | LoRA on 14 of 14 language-model linear layers |" in card.text
    again = tmp_path / "again"
    r, text = run("push", "--repo-id", "ns/tiny-style", "--model", first, "--to-dir", again)
    assert r.exit_code == 0, text
    assert {p.relative_to(first).as_posix(): p.read_bytes() for p in first.rglob("*") if p.is_file()} == \
        {p.relative_to(again).as_posix(): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    # with the base's Hub id, the card links it and says how the two relate
    named = tmp_path / "named"
    r, text = run("push", "--repo-id", "ns/tiny-style", "--adapter", adapters["idefics3"], "--merge", "--eval", ev,
                  "--base-repo-id", "ns/tiny-base", "--to-dir", named, "--probes", "2")
    assert r.exit_code == 0, text
    card = ModelCard((named / "README.md").read_text())
    assert card.data.base_model == "ns/tiny-base" and card.data.base_model_relation == "finetune"
    assert json.loads((named / "metrics.json").read_text())["model"]["id"] == "ns/tiny-base"
