"""release card: front matter, model-index, badges and table from the same numbers; honest
"not measured" sections; renders with the network switched off."""

from __future__ import annotations

import json
import re
import socket

import pytest
from huggingface_hub import ModelCard

from release.card import collect_inputs, render_card, write_card

METRICS = {
    "metrics": {"Bleu_1": 0.612345, "Bleu_2": 0.4, "Bleu_3": 0.31, "Bleu_4": 0.2123456, "METEOR": 0.19876,
                "ROUGE_L": 0.45, "CIDEr": 1.234567, "SPICE": None},
    "unavailable": {"SPICE": "needs Stanford CoreNLP, which cannot be downloaded offline"},
    "n_images": 16,
    "dataset": {"source": "/data/shapes", "split": "test", "n_images": 16, "hash": "0123456789abcdef0123456789"},
    "model": {"id": "x"}, "generation": {"max_new_tokens": 30, "num_beams": 1, "do_sample": False},
    "prompt": "Give a concise caption.", "versions": {"transformers": "5.23.0"},
    "command": "python eval/run.py generate ...", "created": "2026-11-23T08:00:00Z", "seconds": 3.2,
}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the card tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _svg_text(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_card_with_metrics(merged, adapters, tmp_path, no_network):
    mfile = tmp_path / "metrics.json"
    mfile.write_text(json.dumps(METRICS))
    inputs = collect_inputs(merged["idefics3"], repo_id="ns/tiny-smolvlm", metrics=mfile, logs=adapters["idefics3"])
    out = write_card(inputs, tmp_path / "rel" / "README.md")
    text = out.read_text()
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-text-to-text" and data["library_name"] == "transformers"
    assert data["language"] == ["en"] and "image-captioning" in data["tags"] and data["license"]
    results = card.data.eval_results
    got = {r.metric_name: r.metric_value for r in results}
    want = {k: round(v, 4) for k, v in METRICS["metrics"].items() if v is not None}
    assert got == want
    assert {r.dataset_split for r in results} == {"test"}
    assert all(r.dataset_args["n_images"] == 16 for r in results)
    # badges: the same rounded numbers, as files that exist beside the README
    for name in ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L"):
        svg = (out.parent / "badges" / f"{name}.svg").read_text()
        assert _svg_text(svg) == [name, f"{want[name]:.4f}"]
        assert f"![{name}: {want[name]:.4f}](badges/{name}.svg)" in text
        assert f"| {name} | {want[name]:.4f} |" in text
    assert _svg_text((out.parent / "badges" / "eval_set.svg").read_text()) == ["eval set", "test, n=16"]
    assert "| SPICE | not measured: needs Stanford CoreNLP" in text
    assert "**16 images** of the **test** split" in text
    assert "python eval/run.py reproduce ns/tiny-smolvlm" in text
    assert "AutoModelForImageTextToText.from_pretrained(model_id" in text
    assert "AutoModelForVision2Seq.from_pretrained(model_id" in text
    assert "## Intended use" in text and "## Limitations" in text and "## Licence" in text
    assert "| method | LoRA r=4, alpha=8.0, dropout=0.0 |" in text
    assert "| schedule | 10 steps, batch 4 x 1 accumulation |" in text
    assert "| optimizer | adamw_torch, lr 0.0001, cosine schedule, weight decay not recorded |" in text
    assert "### Merge check" in text and "identical greedy captions 2/2" in text
    png = (out.parent / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "![training loss](loss_curve.png)" in text
    assert "logs/ (TensorBoard)" in text and "last validation loss 1.1000 at step 10" in text


def test_scene_accuracy_has_its_own_named_table_and_nothing_else_changes(merged, tmp_path, no_network):
    """An eval on the shapes set records scene accuracy: the card prints it in a table of its
    own, explained, rounded like the metrics, and leaves model-index, badges and the rest of
    the card exactly as they are without it."""
    scene = {"exact": 0.625, "object_precision": 0.8123456, "object_recall": 0.7, "count": 0.875,
             "relation": None, "n_images": 16}
    texts, files = {}, {}
    for name, doc in (("plain", METRICS), ("scene", dict(METRICS, scene_accuracy=scene))):
        mfile = tmp_path / f"{name}.json"
        mfile.write_text(json.dumps(doc))
        texts[name], files[name] = render_card(collect_inputs(merged["idefics3"], repo_id="ns/m", metrics=mfile))
    text = texts["scene"]
    assert "### Scene accuracy (synthetic shapes set)" in text
    assert "fraction of captions that name exactly the image's objects" in text and "(16 images)" in text
    for row in ("| exact object set (share of captions) | 0.6250 |",
                "| object precision (named objects in the image) | 0.8123 |",
                "| object recall (image objects named) | 0.7000 |",
                "| object count right (share of captions) | 0.8750 |",
                "| stated relations that hold | not measured: no caption states a relation |"):
        assert row in text
    assert files["scene"] == files["plain"]  # no badge of its own
    card = ModelCard(text)
    assert card.data.to_dict() == ModelCard(texts["plain"]).data.to_dict()  # model-index: captioning metrics only
    start = text.index("\n### Scene accuracy")
    section = text[start:text.index("\n## Usage")]
    assert text.replace(section, "") == texts["plain"] and "Scene accuracy" not in texts["plain"]


def test_card_without_metrics_or_logs_says_not_measured(merged, tmp_path, no_network):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(merged["blip"], model)
    (model / "train_config.yaml").unlink()
    text, files = render_card(collect_inputs(model, repo_id="ns/tiny-blip"))
    card = ModelCard(text)
    assert card.data.eval_results is None and "model-index" not in text
    assert "**Not measured.** This model was not evaluated" in text
    assert "## Not measured" in text and "captioning metrics" in text and "training loss curve" in text
    assert "**Not recorded.** No `train_config.yaml`" in text
    assert "CIDEr" not in "".join(k for k in files)  # no metric badge without metrics ...
    assert _svg_text(files["badges/eval.svg"].decode()) == ["eval", "not measured"]  # ... a grey one instead
    assert "loss_curve.png" not in files
    assert card.data.license == "other"  # licence unknown is shown, not guessed
    assert "**Not known.**" in text
    assert "processor.decode(ids[0]" in text  # BLIP's snippet: no chat template


def test_loss_from_trainer_state_and_licence_from_base_readme(merged, adapters, release_bases, tmp_path,
                                                              no_network):
    (release_bases["blip"] / "README.md").write_text("---\nlicense: bsd-3-clause\n---\n# base\n")
    try:
        inputs = collect_inputs(merged["blip"], repo_id="ns/b", logs=adapters["blip"])
    finally:
        (release_bases["blip"] / "README.md").unlink()
    assert inputs.license == "bsd-3-clause" and "README.md front matter" in inputs.license_source
    assert inputs.loss_source.endswith("trainer_state.json") and len(inputs.loss["train"]) == 10
    text, files = render_card(inputs)
    assert files["loss_curve.png"][:4] == b"\x89PNG"
    assert "license: bsd-3-clause" in text


def test_card_says_the_lora_coverage(merged, adapters, tmp_path, no_network):
    """The training table's LoRA coverage row: from the training record beside the adapter
    (or --logs), from release.json in a release folder, "not recorded" without either; a
    damaged record is refused in one line."""
    import shutil

    from captioning.errors import UserError
    from captioning.records import KIND_RELEASE, RELEASE, write_record

    def row(inputs) -> str:
        return next(ln for ln in render_card(inputs)[0].splitlines() if ln.startswith("| LoRA coverage |"))

    assert row(collect_inputs(adapters["idefics3"], repo_id="ns/a")) == (
        "| LoRA coverage | LoRA on 14 of 14 language-model linear layers |")
    assert row(collect_inputs(merged["idefics3"], repo_id="ns/m")) == "| LoRA coverage | not recorded |"
    narrow = {"targeted": 4, "language_linear": 14, "left_out": ["model.text_model.layers.*.mlp.up_proj"],
              "outside": [], "source": "lora.target_modules"}
    logs = tmp_path / "logs"
    logs.mkdir()
    record = json.loads((adapters["idefics3"] / "metrics.json").read_text())
    (logs / "metrics.json").write_text(json.dumps(dict(record, lora_coverage=narrow)))
    said = ("| LoRA coverage | LoRA on 4 of 14 language-model linear layers (lora.target_modules leaves out: "
            "`model.text_model.layers.*.mlp.up_proj`) |")
    assert row(collect_inputs(merged["idefics3"], repo_id="ns/m", logs=logs)) == said
    release = tmp_path / "release"
    shutil.copytree(merged["idefics3"], release)
    write_record(release / RELEASE, KIND_RELEASE, {"repo_id": "ns/m", "release": "merged", "base": {"id": "ns/base"},
                                                   "lora_coverage": narrow})
    assert row(collect_inputs(release, repo_id="ns/m")) == said
    (logs / "metrics.json").write_text(json.dumps(dict(record, lora_coverage={"targeted": "all"})))
    with pytest.raises(UserError, match="lora_coverage is not a coverage record"):
        collect_inputs(merged["idefics3"], repo_id="ns/m", logs=logs)


def test_unknown_template_is_a_user_error(merged):
    from captioning.errors import UserError

    with pytest.raises(UserError, match="--template nope"):
        render_card(collect_inputs(merged["blip"]), template="nope")
