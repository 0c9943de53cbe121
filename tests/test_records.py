"""captioning.records: one atomic writer, kinds and schemas checked on read, old files still
load, and weights identified by content."""

import json
import os
import shutil

import pytest

from captioning.errors import UserError
from captioning.files import write_atomic
from captioning.fingerprints import weights_fingerprint
from captioning.records import (
    KIND_EVAL,
    KIND_TRAINING,
    EvalRecord,
    TrainConfigRecord,
    TrainingRecord,
    not_comparable,
    write_record,
)

EVAL_DOC = {"metrics": {"CIDEr": 0.5, "Bleu_4": 0.1}, "n_images": 16,
            "dataset": {"source": "data/shapes", "split": "test", "hash": "a" * 64},
            "generation": {"max_new_tokens": 20}, "prompt": None,
            "model": {"id": "m", "weights_fingerprint": "f" * 64, "adapter_fingerprint": None}}


def test_write_atomic_respects_the_umask_and_leaves_no_temp_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "sub" / "a.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: results are for sharing
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_records_carry_kind_and_schema_and_kinds_are_not_mixed_up(tmp_path):
    write_record(tmp_path / "eval" / "metrics.json", KIND_EVAL, EVAL_DOC)
    write_record(tmp_path / "train" / "metrics.json", KIND_TRAINING, {"metrics": {"loss": 1.0}, "history": []})
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (doc["kind"], doc["schema"]) == ("eval", 1)
    assert EvalRecord.read(tmp_path / "eval").metrics["CIDEr"] == 0.5
    assert TrainingRecord.read(tmp_path / "train").metrics == {"loss": 1.0}
    with pytest.raises(UserError, match=r"train/metrics.json is a training record .* not an eval record: pass "
                                        r"the --out folder of eval/run.py generate"):
        EvalRecord.read(tmp_path / "train")
    with pytest.raises(UserError, match="is an eval record .* not a training record"):
        TrainingRecord.read(tmp_path / "eval")


def test_old_records_without_a_kind_still_load(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.json").write_text(json.dumps(EVAL_DOC))  # as written before records had kinds
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "metrics.json").write_text(json.dumps({"metrics": {}, "train": {"global_step": 3}}))
    assert EvalRecord.read(tmp_path / "e").n_images == 16
    assert TrainingRecord.read(tmp_path / "t").train["global_step"] == 3


def test_unreadable_and_newer_records_fail_in_one_line(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=r"metrics.json is not valid JSON: .*regenerate it"):
        EvalRecord.read(bad)
    bad.write_text(json.dumps({**EVAL_DOC, "kind": "eval", "schema": 99}))
    with pytest.raises(UserError, match="schema 99 is newer than this toolkit reads"):
        EvalRecord.read(bad)
    bad.write_text(json.dumps({"kind": "eval"}))
    with pytest.raises(UserError, match="no 'metrics' object"):
        EvalRecord.read(bad)
    with pytest.raises(UserError, match="no such file"):
        EvalRecord.read(tmp_path / "missing.json")


def test_train_config_record(tmp_path):
    (tmp_path / "train_config.yaml").write_text(
        "model: {name_or_path: org/base, family: idefics3, revision: v1}\ndata: {prompt: null, "
        "caption_transform: linguistic_errors}\n")
    rec = TrainConfigRecord.find(tmp_path)
    assert (rec.base, rec.base_revision, rec.family) == ("org/base", "v1", "idefics3")
    assert rec.has_prompt and rec.prompt is None and rec.caption_transform == "linguistic_errors"
    assert TrainConfigRecord.find(tmp_path / "nothing-here") is None
    (tmp_path / "train_config.yaml").write_text("model: [1, 2\n")
    with pytest.raises(UserError, match="train_config.yaml is not valid YAML"):
        TrainConfigRecord.find(tmp_path)
    (tmp_path / "train_config.yaml").write_text("- a list\n")
    with pytest.raises(UserError, match="expected the sections of a training config"):
        TrainConfigRecord.find(tmp_path)


def test_weights_fingerprint_follows_the_tensors_not_the_folder(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    src = tiny_models["idefics3"]
    fp = weights_fingerprint(src)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "rope_theta": 1234}))  # config edits do not count
    assert weights_fingerprint(copy) == fp
    tensors = load_file(str(copy / "model.safetensors"))
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt", "note": "resaved"})
    assert weights_fingerprint(copy) == fp  # nor does the header's metadata
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert weights_fingerprint(copy) != fp
    assert weights_fingerprint(tmp_path) is None  # no safetensors at all
    for junk in (b"\x10\x00", b"this is not a safetensors file"):  # the second claims a header of petabytes
        (copy / "model.safetensors").write_bytes(junk)
        with pytest.raises(UserError, match="not a readable safetensors file"):
            weights_fingerprint(copy)


def test_not_comparable_names_every_difference(tmp_path):
    a = EvalRecord(path=tmp_path / "a.json", doc=EVAL_DOC)
    other = {**EVAL_DOC, "n_images": 8, "dataset": {**EVAL_DOC["dataset"], "split": "val", "hash": "b" * 64,
                                                    "caption_transform": "linguistic_errors"},
             "scoring": {"tokenize": False}}
    assert not_comparable(a, a) == []
    assert not_comparable(a, EvalRecord(path=tmp_path / "b.json", doc=other)) == [
        "other references", "split val vs test", "caption transform linguistic_errors vs none", "n_images 8 vs 16",
        "not tokenized"]


def test_scrub_paths_removes_local_paths_and_nothing_else():
    from captioning.portability import local_paths_in, scrub_paths

    doc = {"model": "/home/me/runs/base", "cmd": "eval/run.py generate --model /tmp/a/runs/style --out runs/e",
           "spice": "needs CoreNLP in /srv/venv/lib/spice/lib; not attempted", "home": "~/data/coco",
           "kept": "</s> [/INST] https://huggingface.co/org/x a/b 1/2 <local>/x", "n": 3, "list": ["/x/y/"]}
    out = scrub_paths(doc, {"/home/me/runs/base": "me/base"})
    assert out == {"model": "me/base", "cmd": "eval/run.py generate --model <local>/style --out runs/e",
                   "spice": "needs CoreNLP in <local>/lib; not attempted", "home": "<local>/coco",
                   "kept": doc["kept"], "n": 3, "list": ["<local>/y"]}
    assert local_paths_in(str(out)) == [] and local_paths_in(str(doc))
