"""The Space says which card numbers compare and who is who, from the records alone: tiny
folders holding only records (no weights), read as the Space reads a served model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from captioning.records import KIND_EVAL, KIND_RELEASE, KIND_TRAINING, write_record
from tests.space.helpers import space_part

models = space_part("models")
lineup = space_part("lineup")
views = space_part("views")

HASH_TEST, HASH_VAL, HASH_STYLE = "a" * 64, "b" * 64, "c" * 64


def _scores_doc(cider, bleu4, *, split="test", n=16, hash_=HASH_TEST, transform="none", **extra) -> dict:
    return {"metrics": {"CIDEr": cider, "Bleu_4": bleu4, "METEOR": 0.2}, "n_images": n,
            "dataset": {"source": "shapes", "split": split, "n_images": n, "hash": hash_,
                        "caption_transform": transform}, **extra}


def _eval(folder: Path, cider=0.5, bleu4=0.25, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder / "metrics.json", KIND_EVAL, _scores_doc(cider, bleu4, **kw) | {"scoring": {"tokenize": True}})
    return folder


def _training(folder: Path, cider=1.479, bleu4=0.5, *, method="full", factory=None, steps=40, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"split": "val", "n": 50, "hash_": HASH_VAL} | kw
    write_record(folder / "metrics.json", KIND_TRAINING, _scores_doc(cider, bleu4, **kw)
                 | {"model": {"id": None, "method": method, "factory": factory},
                    "train": {"global_step": steps}, "history": []})
    return folder


def _train_config(folder: Path, *, base=None, lora=False, factory=None, transform="none") -> None:
    (folder / "train_config.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": base, "factory": factory, "family": "idefics3"},
        "lora": {"enabled": lora}, "quantization": {"enabled": False},
        "data": {"source": "shapes", "caption_transform": transform}}))


def _infos(*folders: Path, names: dict[Path, str] | None = None) -> list:
    names = names or {}
    infos = [models.read_model_info(models.ModelEntry(str(f), name=names.get(f))) for f in folders]
    lineup.unique_labels(infos)
    return infos


@pytest.fixture
def demo(tmp_path):
    return demo_records(tmp_path)


def demo_records(tmp_path: Path) -> dict[str, Path]:
    """The README's demo, as records: a base trained from random init (training record, val,
    plain references), its LoRA style fine-tune as a training output (adapter, val, style
    references) and as a merged release (eval record, test), and an untouched factory model."""
    base = _training(tmp_path / "runs" / "shapes-tiny", factory={"family": "idefics3", "size": "tiny"})
    _train_config(base, factory={"family": "idefics3", "size": "tiny"})
    run = _training(tmp_path / "runs" / "shapes-tiny-style", cider=1.626, method="lora", hash_=HASH_STYLE,
                    transform="linguistic_errors")
    _train_config(run, base=str(base), lora=True, transform="linguistic_errors")
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    rel = _eval(tmp_path / "release" / "shapes-tiny-style", cider=0.386, bleu4=0.0)
    _train_config(rel, base="<local>/shapes-tiny", lora=True, transform="linguistic_errors")
    write_record(rel / "release.json", KIND_RELEASE,
                 {"release": "merged", "base": {"id": None, "relation": "finetune"}})
    untrained = _training(tmp_path / "runs" / "untrained", cider=0.01, steps=0, factory={"family": "idefics3"})
    _train_config(untrained, factory={"family": "idefics3"})
    return {"base": base, "run": run, "release": rel, "untrained": untrained}


# ------------------------------------------------------------------------------ comparable or flagged

def _info(label, doc):
    return models.ModelInfo(entry=models.ModelEntry(label), label=label, metrics=doc)


def test_same_set_is_shown_comparable():
    a, b = _info("Base", _scores_doc(0.5, 0.2)), _info("Tuned", _scores_doc(0.9, 0.3))
    assert views.card_not_comparable(a, b) is None
    assert views.card_comparable(a, b) == "comparable with Base's (same: eval on test, 16 images, plain references)"
    html = views.compare_html([{"name": i.label, "family": "idefics3", "caption": "c", "seconds": 0.1, "error": None,
                                **views.card_fields(a, i)} for i in (a, b)])
    assert html.count('class="cmp-ok"') == 1 and 'class="cmp-warn"' not in html
    assert views.comparable_sets([a, b]) == {"Base": "A", "Tuned": "A"}


@pytest.mark.parametrize("other, reason", [
    (dict(split="val", hash_=HASH_VAL), "different split: val vs test"),
    (dict(hash_=HASH_STYLE, transform="linguistic_errors"),
     "scored against style references (linguistic_errors) vs plain references"),
    (dict(n=8, hash_=HASH_VAL), "different image count: 8 vs 16"),
    (dict(hash_=HASH_VAL), "different images or reference captions (dataset content differs)"),
    (dict(hash_=None), "dataset content not recorded (no references hash)"),
])
def test_differences_are_flagged_with_the_reason(other, reason):
    a, b = _info("Base", _scores_doc(0.5, 0.2)), _info("Tuned", _scores_doc(0.9, 0.3, **other))
    assert views.card_not_comparable(a, b) == f"not comparable with Base's: {reason}"  # one reason, the plainest
    assert views.card_comparable(a, b) is None
    html = views.compare_html([{"name": i.label, "family": "x", "caption": "c", "seconds": 0.1, "error": None,
                                **views.card_fields(a, i)} for i in (a, b)])
    assert html.count('class="cmp-warn"') == 1 and 'class="cmp-ok"' not in html
    assert views.esc(reason).replace("'", "&#x27;") in html
    assert len(set(views.comparable_sets([a, b]).values())) == 2


def test_training_validation_is_never_comparable_with_an_eval(demo):
    base, _, rel, _ = _infos(demo["base"], demo["run"], demo["release"], demo["untrained"])
    assert base.card_metrics()["measured"] == "training" and rel.card_metrics()["measured"] == "eval"
    assert views.metrics_line(base) == "CIDEr 1.479 · BLEU-4 0.500 (measured during training on val, 50 images, " \
                                       "plain references)"
    why = views.card_not_comparable(base, rel)
    assert why.startswith(f"not comparable with {base.label}'s: eval on test vs measured during training on val")
    assert "scored against style references (linguistic_errors)" not in why  # the release was scored on plain ones
    assert "trained on linguistic_errors-style captions, scored against plain references" in views.card_line(rel)
    assert "trained on" not in views.card_line(base)
    # the card line of a fine-tune whose base is served says whether their numbers compare
    run = _infos(demo["base"], demo["run"])[1]
    assert "not comparable with shapes-tiny&#x27;s: scored against style references (linguistic_errors) vs plain " \
           "references" in views.card_line(run).replace("'", "&#x27;")


def test_one_number_format_and_the_scale_said_once(demo):
    infos = _infos(demo["base"], demo["run"], demo["release"])
    about = views.about_markdown(infos, infos[0].key, [i.key for i in infos[:2]])
    assert about.count(views.SCALE_NOTE) == 1 and "0-1 scale" not in about
    assert "| 1.479 | 0.500 |" in about and "| 0.386 | 0.000 |" in about
    assert "- set A: measured during training on val, 50 images, plain references\n- set B: measured during " \
           "training on val, 50 images, style references (linguistic_errors)\n- set C: eval on test" in about
    assert str(demo["base"].parent) not in about.split("## API")[0]  # a folder's name, never where the server keeps it
    assert "never comparable with an evaluation's" in about


def test_models_table_rows_hold_numbers(demo):
    infos = _infos(demo["base"], demo["run"], demo["release"], demo["untrained"])
    rows = views.models_table(infos, status={infos[0].key: "in memory"},
                              ids={i.key: f"id{n}" for n, i in enumerate(infos)})
    assert json.loads(json.dumps(rows)) == rows
    base, run, rel, untrained = rows
    assert base["CIDEr"] == pytest.approx(1.479) and isinstance(base["BLEU-4"], float)
    assert isinstance(rel["BLEU-4"], float) and rel["BLEU-4"] == 0.0 and rel["n_images"] == 16
    assert (base["measured"], rel["measured"], rel["split"]) == ("training", "eval", "test")
    assert base["comparable_set"] == untrained["comparable_set"] != run["comparable_set"] != rel["comparable_set"]
    assert (base["status"], run["status"]) == ("in memory", None)
    assert [r["model"] for r in rows] == ["id0", "id1", "id2", "id3"]
    assert run["base"] == "id0" and rel["base"] == "<local>/shapes-tiny"  # a base not served: as the records name it
    assert views.models_table([_info("none", None)])[0] | {"model": None} == {
        "model": None, "name": "none", "kind": "base", "badge": "base", "description": "base model", "base": None,
        "family": None, "CIDEr": None, "BLEU-4": None, "measured": None, "split": None, "n_images": None,
        "references": None, "comparable_set": None, "trained_style": None, "status": None}


# ------------------------------------------------------------------------------------ who is who

def test_same_name_gets_told_apart_by_its_records(demo):
    infos = _infos(demo["release"], demo["run"], demo["base"])
    labels = [i.label for i in infos]
    assert labels == ["shapes-tiny-style (LoRA fine-tune of shapes-tiny)",
                      "shapes-tiny-style (LoRA adapter on shapes-tiny)", "shapes-tiny"]
    assert not any(re.search(r"\(\d+\)$", label) for label in labels)
    assert infos[1].paired_base is infos[2] and infos[0].paired_base is None  # the release names its base by <local>


def test_same_name_and_same_records_told_apart_by_where(tmp_path):
    a, b = _eval(tmp_path / "one" / "blip"), _eval(tmp_path / "two" / "blip")
    assert [i.label for i in _infos(a, b)] == ["blip (one/blip)", "blip (two/blip)"]
    named = _infos(a, b, names={a: "Captioner", b: "Captioner"})
    assert [i.label for i in named] == ["Captioner (one/blip)", "Captioner (two/blip)"]
    assert [i.label for i in _infos(a, b, names={a: "First", b: "Second"})] == ["First", "Second"]  # kept as given


def test_badges_for_base_fine_tune_and_untrained(demo, tmp_path):
    base, run, rel, untrained = _infos(demo["base"], demo["run"], demo["release"], demo["untrained"])
    assert [models.badge(i) for i in (base, run, rel, untrained)] == ["base", "LoRA adapter", "LoRA fine-tune",
                                                                       "untrained"]
    assert (base.kind, run.kind, rel.kind, untrained.kind) == ("base", "fine-tune", "fine-tune", "untrained")
    assert base.from_scratch and models.description(base) == "base model, trained from random init"
    assert models.description(untrained) == "untrained: random weights"
    full = _training(tmp_path / "full", method="full")
    _train_config(full, base="org/pretrained")
    info = _infos(full)[0]
    assert (models.badge(info), models.description(info)) == ("full fine-tune", "full fine-tune of org/pretrained")
    bare = tmp_path / "factory"
    bare.mkdir()
    _train_config(bare, factory={"family": "idefics3"})  # random weights, no training record, no release
    assert models.badge(_infos(bare)[0]) == "untrained"
    plain = _infos(_eval(tmp_path / "plain"))[0]  # no record names a base or a factory: a base
    assert models.badge(plain) == "base" and not plain.from_scratch
    line = views.card_line(run)
    assert 'class="model-badge badge-fine-tune"' in line and "LoRA adapter on shapes-tiny" in line
    assert "family: idefics3" in line
    line = views.card_line(untrained)
    assert 'badge-untrained"' in line and ">untrained</span>" in line and "untrained: random weights" in line


def test_records_say_why_in_words(tmp_path):
    """captioning.comparability.why_not_comparable: every difference named, b's side first; the
    compact not_comparable that eval/compare.py prints is unchanged."""
    from captioning.comparability import read_scores, why_not_comparable
    from captioning.errors import UserError
    from captioning.records import EvalRecord, not_comparable

    plain = _eval(tmp_path / "plain")
    untokenized = tmp_path / "raw" / "metrics.json"
    untokenized.parent.mkdir()
    write_record(untokenized, KIND_EVAL, _scores_doc(0.5, 0.2) | {"scoring": {"tokenize": False}})
    val = _training(tmp_path / "val", split="test", n=8)
    a, raw, trained = read_scores(plain), read_scores(untokenized), read_scores(val)
    assert type(a).__name__ == "EvalRecord" and type(trained).__name__ == "TrainingRecord"
    assert why_not_comparable(a, a) == [] and not_comparable(a, EvalRecord(path=raw.path, doc=raw.doc)) == [
        "not tokenized"]
    assert why_not_comparable(a, raw) == ["scored without vs with tokenization"]
    assert why_not_comparable(a, trained) == ["measured during training on test vs eval on test",
                                              "different image count: 8 vs 16"]
    write_record(tmp_path / "mc.json", "merge_check", {"passed": True, "max_abs_logit_diff": 0.0})
    with pytest.raises(UserError, match="not an eval record"):
        read_scores(tmp_path / "mc.json")


def test_about_names_the_four_endpoints_by_model_id_and_the_mcp_server(demo):
    infos = _infos(demo["base"], demo["run"], demo["release"])
    about = views.about_markdown(infos, "shapes-tiny", ["shapes-tiny", "shapes-tiny-style"])
    api = about.split("## API and MCP")[1]
    assert all(f"`{e}`" in api for e in ("/caption", "/compare", "/batch", "/models"))
    assert 'client.predict(handle_file("photo.jpg"), api_name="/caption")' in api  # the image alone is enough
    assert "model='shapes-tiny'" in api and "models=['shapes-tiny', 'shapes-tiny-style']" in api
    assert "/gradio_api/mcp/" in api and str(demo["base"]) not in api


def test_a_folder_saved_by_the_factory_is_badged_untrained(tmp_path):
    """synthetic.factory's record (factory.json) is what says the weights are random."""
    from synthetic.factory import build_random_model

    folder = build_random_model("blip", tmp_path / "tiny-blip")
    assert (folder / "factory.json").is_file()
    plain = tmp_path / "copied-weights"
    shutil.copytree(folder, plain, ignore=shutil.ignore_patterns("factory.json"))
    random_info, plain_info = _infos(folder, plain)
    assert random_info.kind == models.KIND_UNTRAINED and models.badge(random_info) == "untrained"
    assert plain_info.kind == models.KIND_BASE  # no record: nothing says it is untrained


def test_card_precision_is_the_records_label():
    """A card's precision reads as the release card and ``reproduce`` print it
    (captioning.records.record_precision): full precision by its dtype (float32 goes unsaid),
    int8 with what ran at int8 and, when it batched, how many images per forward."""
    from captioning.records import record_precision

    fp32 = _info("Full", _scores_doc(0.5, 0.2, dtype="float32"))
    bf16 = _info("Half", _scores_doc(0.5, 0.2, dtype="bfloat16"))
    int8 = _info("Int8", _scores_doc(0.5, 0.2, dtype="float32", quantize="int8", images_per_forward=4))
    assert [i.card_metrics()["precision"] for i in (fp32, bf16)] == ["float32", "bfloat16"]
    assert int8.card_metrics()["precision"] == record_precision(int8.metrics) == \
        "int8 weights and activations (float32 elsewhere), 4 images per forward"
    assert views.metrics_line(fp32).endswith("(eval on test, 16 images, plain references)")
    assert views.metrics_line(bf16).endswith("plain references, at bfloat16)")
    assert views.metrics_line(int8).endswith(
        "plain references, at int8 weights and activations (float32 elsewhere), 4 images per forward)")
