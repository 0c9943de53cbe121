"""Config: defaults < YAML < flags, every recipe validates, errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from captioning.data import linguistic_errors
from captioning.errors import UserError
from training.config import all_keys, build_config, load_config, load_recipe, parse_overrides
from training.data import CaptionTrainDataset

RECIPES = sorted((Path(__file__).resolve().parents[2] / "training" / "recipes").glob("*.yaml"))
BASE = {"model": {"name_or_path": "some/model"}, "data": {"source": "data/shapes"}}


def test_recipes_folder_has_the_documented_recipes():
    names = {p.stem for p in RECIPES}
    assert {"smolvlm-coco-lora", "smolvlm-coco-qlora", "blip-flickr8k-full", "blip-coco-lora",
            "shapes-tiny", "shapes-tiny-style"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates(recipe):
    from captioning.data import HUB_DATASETS

    cfg = load_config(["--config", str(recipe)])
    assert cfg.name == recipe.stem
    src = cfg.data.source
    assert src in HUB_DATASETS or src.startswith("data/"), f"{recipe.name}: data.source {src} is neither a known " \
                                                           "hub dataset nor a local data/ folder"
    if cfg.quantization.load_in_4bit:
        assert cfg.lora.enabled
    # the resolved config round-trips through YAML
    import yaml

    again = build_config(yaml.safe_load(cfg.to_yaml()))
    assert again.to_dict() == cfg.to_dict()


def test_specific_recipe_choices():
    lora = load_config(["--config", "training/recipes/smolvlm-coco-lora.yaml"])
    assert lora.model.name_or_path == "HuggingFaceTB/SmolVLM-Instruct" and lora.data.source == "jxie/coco_captions"
    assert lora.data.image_longest_edge == 1536 and lora.model.freeze_vision
    q = load_config(["--config", "training/recipes/smolvlm-coco-qlora.yaml"])
    assert q.quantization.load_in_4bit and q.quantization.quant_type == "nf4" and q.quantization.double_quant
    full = load_config(["--config", "training/recipes/blip-flickr8k-full.yaml"])
    assert not full.lora.enabled and full.data.source == "ariG23498/flickr8k"
    tiny = load_config(["--config", "training/recipes/shapes-tiny.yaml"])
    assert tiny.model.factory.family == "idefics3" and not tiny.lora.enabled
    style = load_config(["--config", "training/recipes/shapes-tiny-style.yaml"])
    assert style.data.caption_transform == "linguistic_errors" and style.lora.enabled


def test_precedence_defaults_yaml_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: m}\ndata: {source: s}\noptim: {lr: 0.001, batch_size: 4}\n")
    cfg = load_config(["--config", str(recipe), "--optim.lr", "1e-4"])
    assert cfg.optim.lr == 1e-4  # flag beats YAML
    assert cfg.optim.batch_size == 4  # YAML beats default
    assert cfg.optim.grad_accum == 1  # default
    assert cfg.name == "r"


def test_flag_forms():
    o = parse_overrides(["--lr", "2e-4", "--lora.use_dora", "--no-lora.use_rslora", "--max-steps", "7",
                         "--output-dir", "x", "--optim.gradient_checkpointing", "false", "--data.image_splitting",
                         "null", "--eval.metrics", "CIDEr,Bleu_4", "--model.freeze_vision=false"])
    assert o == {"optim.lr": "2e-4", "lora.use_dora": True, "lora.use_rslora": False, "optim.max_steps": "7",
                 "output.dir": "x", "optim.gradient_checkpointing": "false", "data.image_splitting": "null",
                 "eval.metrics": "CIDEr,Bleu_4", "model.freeze_vision": "false"}
    cfg = build_config(BASE, o)
    assert cfg.optim.lr == 2e-4 and cfg.lora.use_dora and not cfg.lora.use_rslora and cfg.optim.max_steps == 7
    assert cfg.output.dir == "x" and cfg.data.image_splitting is None and cfg.eval.metrics == ["CIDEr", "Bleu_4"]
    assert cfg.model.freeze_vision is False


def test_every_bool_can_be_switched_off_from_the_command_line():
    import typing

    from training.config import _unwrap_optional

    bools = [k for k, t in all_keys().items() if _unwrap_optional(t)[0] is bool]
    assert len(bools) >= 12
    for key in bools:
        base = BASE
        if key == "model.freeze_language":  # valid only for full fine-tuning of something else
            base = {**BASE, "lora": {"enabled": False}, "model": {**BASE["model"], "train_connector": True}}
        on = build_config(base, parse_overrides([f"--{key}"]))
        off = build_config(base, parse_overrides([f"--no-{key}"]))
        off2 = build_config(base, parse_overrides([f"--{key}", "false"]))
        get = lambda c, key=key: typing.cast(bool, eval("c." + key, {"c": c}))  # noqa: E731
        if key == "data.feature_cache" or key.startswith("quantization.load_in"):
            continue  # need other settings to be valid when on; off is checked below
        assert get(on) is True and get(off) is False and get(off2) is False, key
    for key in ("data.feature_cache", "quantization.load_in_4bit", "quantization.load_in_8bit"):
        assert eval("c." + key, {"c": build_config(BASE, parse_overrides([f"--no-{key}"]))}) is False


def test_factory_section_from_flags():
    cfg = build_config({"data": {"source": "s"}, "lora": {"enabled": False}},
                       parse_overrides(["--model.factory.size", "tiny", "--model.factory.seed", "3"]))
    assert cfg.model.factory.family == "idefics3" and cfg.model.factory.seed == 3
    with pytest.raises(UserError, match="--seed is ambiguous"):
        parse_overrides(["--seed", "1"])


@pytest.mark.parametrize("args, match", [
    (["--optim.lrr", "1"], r"unknown option --optim\.lrr \(did you mean --optim\.lr\?\)"),
    (["--bogus", "1"], "unknown option --bogus"),
    (["--optim.lr", "fast"], r"optim\.lr: expected a number"),
    (["--optim.batch_size", "2.5"], r"optim\.batch_size: expected an integer"),
    (["--lora.use_dora", "maybe"], "unexpected argument 'maybe'"),
    (["--no-optim.lr"], "not a switch"),
    (["--quantization.load_in_4bit", "--quantization.load_in_8bit"], "load_in_4bit and quantization.load_in_8bit"),
    (["--quantization.load_in_4bit", "--no-lora.enabled"], r"quantization\.load_in_4bit needs lora\.enabled"),
    (["--quantization.load_in_8bit", "--lora.enabled", "false"], r"quantization\.load_in_8bit needs lora\.enabled"),
    (["--data.feature_cache", "--no-model.freeze_vision"], r"data\.feature_cache needs a frozen vision"),
    (["--data.feature_cache", "--model.train_connector"], r"model\.train_connector"),
    (["--eval.metric_for_best", "SPICE"], r"eval\.metric_for_best 'SPICE'"),
    (["--eval.metrics", "CIDEr,Foo"], r"eval\.metrics: unknown Foo"),
    (["--optim.precision", "fp8"], r"optim\.precision 'fp8'"),
    (["--optim.warmup_steps", "3", "--optim.warmup_ratio", "0.1"], "warmup_steps and optim.warmup_ratio"),
    (["--data.caption_transform", "shout"], r"data\.caption_transform 'shout'"),
    (["--model.factory.family", "idefics3"], r"model\.name_or_path and model\.factory: set exactly one"),
    (["--output.save_every_steps", "3", "--eval.every_steps", "2"], r"output\.save_every_steps must be a multiple"),
    (["--model.freeze_language"], r"model\.freeze_language with lora\.enabled"),
    (["--model.freeze_language", "--no-lora.enabled"], "nothing would train"),
])
def test_errors_name_the_key(args, match):
    with pytest.raises(UserError, match=match):
        build_config(BASE, parse_overrides(args))


def test_yaml_errors_name_the_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: m}\ndata: {source: s}\noptim: {learning_rate: 1}\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown key optim\.learning_rate"):
        load_config(["--config", str(bad)])
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(UserError, match="mapping of sections"):
        load_recipe(tmp_path / "list.yaml")


def test_factory_with_lora_is_refused():
    with pytest.raises(UserError, match="model.factory builds an unsaved random base"):
        build_config({"model": {"factory": {"family": "idefics3"}}, "data": {"source": "s"}})


def test_cli_prints_config_and_reports_errors_in_one_line(capsys):
    from training.train import main

    assert main(["--config", "training/recipes/shapes-tiny.yaml", "--print-config", "--optim.lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "factory:" in out
    assert main(["--config", "training/recipes/shapes-tiny.yaml", "--optim.nope", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown option --optim.nope")
    assert main(["--help"]) == 0
    assert "--lora.use_dora" in capsys.readouterr().out


def test_linguistic_errors_transform():
    assert linguistic_errors("a red circle is above the blue square") == \
        "red circle iz above thwisss blue square thwisss iz funny"
    assert linguistic_errors("An apple. ") == "apple thwisss iz funny"


def test_sampled_references_depend_on_seed_and_epoch_only(shapes_dir):
    from captioning.data import load_captions

    ds = load_captions(shapes_dir, "train", max_samples=16)
    a = CaptionTrainDataset(ds, None, None, None, references="sample", seed=0)
    b = CaptionTrainDataset(ds, None, None, None, references="sample", seed=0)
    first = [a.caption(i) for i in range(16)]
    assert first == [b.caption(i) for i in range(16)]
    a.set_epoch(1)
    assert [a.caption(i) for i in range(16)] != first
    every = CaptionTrainDataset(ds, None, None, None, references="all")
    assert len(every) == sum(len(ex.references) for ex in ds)
    assert every.caption(1) == ds[0].references[1]


@pytest.mark.parametrize("key, suggestion", [
    ("optim.learning_rate", "optim.lr"), ("num_train_epochs", "optim.epochs"), ("optim.lrr", "optim.lr"),
    ("data.sorce", "data.source"), ("lora.rank", "lora.r"), ("per_device_train_batch_size", "optim.batch_size")])
def test_unknown_keys_suggest_the_key_meant(key, suggestion):
    with pytest.raises(UserError, match=rf"unknown key {re.escape(key)} \(did you mean {re.escape(suggestion)}\?\)"):
        build_config({"model": {"name_or_path": "m"}, "data": {"source": "s"}}, {key: 1})


def test_a_type_error_names_where_the_value_came_from(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: m}\ndata: {source: s}\noptim: {lr: fast}\n")
    with pytest.raises(UserError, match=r"^.*r\.yaml: optim\.lr: expected a number, got 'fast'$"):
        load_config(["--config", str(recipe)])
    recipe.write_text("model: {name_or_path: m}\ndata: {source: s}\n")
    with pytest.raises(UserError, match=r"^--optim\.lr: expected a number, got 'fast'$"):
        load_config(["--config", str(recipe), "--optim.lr", "fast"])
