"""The `release` command through click's CliRunner: help, one-line errors, --debug, card, merge."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from captioning.errors import UserError
from release.cli import cli, main

from .conftest import NEW_TOKENS, PROBES


@pytest.mark.parametrize("command", ["merge", "card", "push", "space"])
def test_each_command_has_help_with_an_example(command):
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0
    assert f"release {command} --" in r.output  # the docstring's example


@pytest.mark.parametrize("args, message", [
    (["merge", "--adapter", "/no/such/dir", "--out", "x"], "--adapter /no/such/dir: no such folder"),
    (["push", "--repo-id", "ns/x", "--adapter", "a", "--model", "b"], "pass exactly one of --adapter"),
    (["push", "--repo-id", "ns/x", "--model", "b", "--merge"], "--merge needs --adapter"),
    (["push", "--repo-id", "not-a-repo-id", "--model", "b"], "expected NAMESPACE/NAME"),
    (["card", "--model", "/no/such/dir", "--out", "README.md"], "no such folder"),
    (["space", "--repo-id", "ns/s", "--models", " , "], "--models is empty"),
])
def test_user_mistakes_are_one_line(args, message):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in r.output


def test_debug_shows_the_traceback():
    args = ["merge", "--adapter", "/no/such/dir", "--out", "x"]
    r = CliRunner().invoke(cli, [*args, "--debug"])
    assert isinstance(r.exception, UserError)  # re-raised, so the traceback is printed
    r = CliRunner().invoke(cli, ["--debug", *args])
    assert isinstance(r.exception, UserError)
    assert main(args) == 2  # the console-script entry point returns the exit code


def test_push_needs_the_hub_unless_to_dir(merged, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as tests/conftest.py sets it
    r = CliRunner().invoke(cli, ["push", "--repo-id", "ns/x", "--model", str(merged["blip"]), "--token", "t"])
    assert r.exit_code == 2 and "HF_HUB_OFFLINE is set" in r.output and "--to-dir" in r.output


def test_merge_and_card_commands(adapters, tmp_path):
    out = tmp_path / "merged"
    r = CliRunner().invoke(cli, ["merge", "--adapter", str(adapters["blip"]), "--out", str(out), "--probes",
                                 str(PROBES), "--max-new-tokens", str(NEW_TOKENS)])
    assert r.exit_code == 0, r.output
    assert "merge check on 2 probe images" in r.output and "PASS" in r.output and f"merged model: {out}" in r.output
    assert json.loads((out / "merge_check.json").read_text())["passed"]
    r = CliRunner().invoke(cli, ["merge", "--adapter", str(adapters["blip"]), "--out", str(out)])
    assert r.exit_code == 2 and "not empty: pass --force" in r.output

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"CIDEr": 0.5, "Bleu_4": 0.25}, "n_images": 8,
                                   "dataset": {"source": "org/captions", "split": "validation"}}))
    readme = tmp_path / "card" / "README.md"
    r = CliRunner().invoke(cli, ["card", "--model", str(out), "--metrics", str(metrics), "--repo-id", "ns/b",
                                 "--logs", str(adapters["blip"]), "--license", "mit", "--out", str(readme)])
    assert r.exit_code == 0, r.output
    text = readme.read_text()
    assert "license: mit" in text and "- org/captions" in text  # a hub dataset goes into `datasets:`
    assert (readme.parent / "badges" / "CIDEr.svg").is_file() and (readme.parent / "loss_curve.png").is_file()
    r = CliRunner().invoke(cli, ["card", "--model", str(out), "--metrics", str(tmp_path / "nope.json"),
                                 "--out", str(readme)])
    assert r.exit_code == 2 and "no such file" in r.output
