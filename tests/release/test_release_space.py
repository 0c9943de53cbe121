"""The Space README's front matter that `release space` writes, read back as the Hub reads it."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import RepoCard

import release.space as rs
from release.cli import cli
from release.space import SpaceOptions, assemble_space, render_space_readme

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
DESCRIPTION = "Caption images and compare captioners"


@pytest.fixture
def space_dir(tmp_path, monkeypatch):
    """A stand-in for space/ whose README front matter the tests control."""
    d = tmp_path / "space-src"
    d.mkdir()
    (d / "app.py").write_text("import gradio as gr\n")
    (d / "requirements.txt").write_text("transformers>=5\n")
    (d / "README.md").write_text(f"---\ntitle: Captioning\nemoji: 🖼️\nshort_description: {DESCRIPTION}\n---\n\n"
                                 "# Captioning\n\nThe app's own description.\n")
    monkeypatch.setattr(rs, "SPACE_DIR", d)
    return d


def front_matter(text: str) -> dict:
    return RepoCard(text).data.to_dict()


def render(**kw) -> tuple[dict, str]:
    opts = SpaceOptions(repo_id="ns/captioner", **kw)
    text = render_space_readme(opts, rs._entries(opts.models, local=opts.to_dir is not None))
    return front_matter(text), RepoCard(text).text


def test_front_matter_for_hub_ids(space_dir):
    # one repo at two revisions: listed once in models:, preloaded once (the pinned one loads at startup)
    meta, body = render(models=["ns/tiny-ft;name=Fine-tuned", "ns/tiny-base", "ns/tiny-ft;name=Again;revision=v2"])
    assert meta == {
        "title": "Captioning", "sdk": "gradio", "sdk_version": version("gradio"), "python_version": PYTHON,
        "app_file": "app.py", "license": "apache-2.0", "models": ["ns/tiny-ft", "ns/tiny-base"],
        "tags": list(rs.DEFAULT_TAGS), "emoji": "🖼️", "colorFrom": "indigo", "colorTo": "green", "pinned": False,
        "short_description": DESCRIPTION, "suggested_hardware": "cpu-basic",
        "preload_from_hub": ["ns/tiny-ft", "ns/tiny-base"]}
    assert isinstance(meta["python_version"], str)  # '3.11', not the float 3.11
    assert "The app's own description." in body and "(name=Fine-tuned)" in body
    assert "https://huggingface.co/ns/tiny-base" in body and "local folder" not in body

    meta, _ = render(models=["ns/tiny-ft"], hardware="t4-small", short_description="  Captions,\n side by side ",
                     tags=["captioning", " vlm ", "captioning", ""], python_version="3.12.4", title="Demo")
    assert meta["suggested_hardware"] == "t4-small" and meta["short_description"] == "Captions, side by side"
    assert meta["tags"] == ["captioning", "vlm"] and meta["python_version"] == "3.12.4" and meta["title"] == "Demo"
    meta, _ = render(models=["ns/tiny-ft"], tags=[])
    assert "tags" not in meta  # --tags "" turns them off


def test_front_matter_for_local_folders(space_dir, tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    meta, body = render(models=[str(folder)], to_dir=tmp_path / "out")
    # a local folder has no Hub page and cannot be fetched at build: neither list names it
    assert "models" not in meta and "preload_from_hub" not in meta
    assert meta["sdk_version"] == version("gradio") and meta["suggested_hardware"] == "cpu-basic"
    assert f"`{folder.resolve()}` (local folder)" in body and "left out of `models:`" in body

    meta, body = render(models=[f"{folder};name=Mine", "ns/tiny-base"], to_dir=tmp_path / "out", hardware="zero-a10g")
    assert meta["models"] == ["ns/tiny-base"] and meta["preload_from_hub"] == ["ns/tiny-base"]
    assert meta["suggested_hardware"] == "zero-a10g"
    assert "(local folder) (name=Mine)" in body


def test_preload_leaves_out_pinned_revisions_and_keeps_to_the_hub_limit(space_dir):
    ids = [f"ns/m{i}" for i in range(12)]
    meta, body = render(models=["ns/pinned;revision=abc123", *ids])
    assert meta["models"] == ["ns/pinned", *ids]
    assert meta["preload_from_hub"] == ids[:rs.PRELOAD_MAX]
    assert "(revision=abc123): loaded at first use (pinned to a revision)" in body
    assert "[`ns/m11`](https://huggingface.co/ns/m11): loaded at first use (the Hub preloads at most 10" in body


def test_the_real_space_readme_renders(tmp_path):
    """space/README.md's own front matter passes the Hub's limits (its short_description is the default)."""
    opts = SpaceOptions(repo_id="ns/captioner", models=["ns/tiny-ft"])
    meta = front_matter(render_space_readme(opts, opts.models))
    assert len(meta.get("short_description", "")) <= rs.SHORT_DESCRIPTION_MAX
    assert meta["models"] == meta["preload_from_hub"] == ["ns/tiny-ft"]


def run(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["space", "--repo-id", "ns/captioner", *map(str, args)])
    return r.exit_code, r.output


def one_line_error(rc: int, out: str, *needles: str) -> None:
    lines = out.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert all(n in lines[0] for n in needles), out


def test_mistakes_are_one_line_naming_the_flag(space_dir, tmp_path):
    long = "x" * 61
    one_line_error(*run("--models", "ns/a", "--short-description", long), "--short-description is 61 characters",
                   "at most 60")
    assert run("--models", "ns/a", "--short-description", "x" * 60, "--to-dir", tmp_path / "ok")[0] == 0
    one_line_error(*run("--models", "ns/a", "--hardware", "big-gpu"), "--hardware 'big-gpu'", "cpu-basic")
    one_line_error(*run("--models", "ns/a", "--python-version", "2.7"), "--python-version '2.7'", "3.x")
    one_line_error(*run("--models", "ns/a", "--private", "--to-dir", tmp_path / "x"), "--private")
    # a README whose own description is too long is caught before anything is written
    readme = space_dir / "README.md"
    readme.write_text(readme.read_text().replace(DESCRIPTION, long))
    one_line_error(*run("--models", "ns/a", "--to-dir", tmp_path / "y"), "short_description is 61 characters",
                   "--short-description")
    assert not (tmp_path / "y").exists()


def test_a_model_listed_twice_is_refused_naming_it(space_dir, tmp_path):
    """The app refuses to start on a list that names one model twice: so does release space,
    before anything is written."""
    folder = tmp_path / "release"
    folder.mkdir()
    out = tmp_path / "out"
    for models, says in (("ns/a,ns/a", "--models names 'ns/a' twice: list each model once"),
                         ("ns/a;name=One,NS/A;name=Two", "--models names 'NS/A' twice (also as 'ns/a')"),
                         ("ns/a;revision=v1,ns/a;revision=v1", "--models names 'ns/a' twice"),
                         (f"{folder},{folder}/", f"--models names '{folder}/' twice (also as '{folder}')")):
        one_line_error(*run("--models", models, "--to-dir", out), says)
        assert not out.exists()
    # two revisions of one repo are two models
    assert run("--models", "ns/a;revision=v1,ns/a", "--to-dir", out)[0] == 0


def test_the_space_starts_on_what_release_space_accepts(space_dir, tmp_path):
    """Every list release space accepts is one the app's own check (dedupe) accepts too."""
    from tests.space.helpers import load_app_module

    space = load_app_module()
    folder = tmp_path / "release"
    folder.mkdir()
    for models in (["ns/a", "ns/a;revision=v1"], [str(folder), "ns/b"], ["ns/a;name=x", "ns/c;name=x"]):
        opts = SpaceOptions(repo_id="ns/captioner", models=models, to_dir=tmp_path / "out")
        entries = rs._entries(opts.models, local=True)
        assert space.dedupe(space.parse_models(",".join(entries))) == space.parse_models(",".join(entries))
    for models in (["ns/a", "ns/a"], [str(folder), f"{folder}/."]):
        with pytest.raises(rs.UserError, match="twice"):
            SpaceOptions(repo_id="ns/captioner", models=models, to_dir=tmp_path / "out")
        with pytest.raises(space.UserError, match="twice"):
            space.dedupe(space.parse_models(",".join(rs._entries(models, local=True))))


def test_to_dir_and_dry_run(space_dir, tmp_path):
    out = tmp_path / "space-out"
    rc, text = run("--models", "ns/tiny-ft,ns/tiny-base", "--to-dir", out, "--hardware", "t4-small",
                   "--tags", "captioning,demo", "--dry-run")
    assert rc == 0, text
    assert not out.exists() and "nothing was written" in text
    assert "suggested_hardware: t4-small" in text and "preload_from_hub:" in text and "- ns/tiny-base" in text

    rc, text = run("--models", "ns/tiny-ft,ns/tiny-base", "--to-dir", out, "--hardware", "t4-small",
                   "--tags", "captioning,demo")
    assert rc == 0, text
    meta = front_matter((out / "README.md").read_text())
    assert meta["models"] == meta["preload_from_hub"] == ["ns/tiny-ft", "ns/tiny-base"]
    assert meta["suggested_hardware"] == "t4-small" and meta["tags"] == ["captioning", "demo"]
    assert meta["sdk_version"] == version("gradio") and meta["python_version"] == PYTHON
    assert meta["short_description"] == DESCRIPTION


def test_assembled_readme_matches_the_rendered_one(space_dir, tmp_path):
    opts = SpaceOptions(repo_id="ns/captioner", models=["ns/tiny-ft"], to_dir=tmp_path / "unused")
    folder = assemble_space(opts, tmp_path / "assembled")
    assert (folder / "README.md").read_text() == render_space_readme(opts, ["ns/tiny-ft"])
    assert Path(folder / "app.py").read_text() == "import gradio as gr\n"
