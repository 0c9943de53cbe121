"""Config: defaults < YAML < flags, every recipe validates, errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from captioning.data import linguistic_errors
from captioning.errors import UserError
from training.config import OptimConfig, TrainConfig
from training.data import CaptionTrainDataset
from training.flags import build_config, load_config

RECIPES = sorted((Path(__file__).resolve().parents[2] / "training" / "recipes").glob("*.yaml"))
BASE = {"model": {"name_or_path": "some/model"}, "data": {"source": "data/shapes"}}


def test_recipes_folder_has_the_documented_recipes():
    names = {p.stem for p in RECIPES}
    assert {"smolvlm-coco-lora", "smolvlm-coco-qlora", "blip-flickr8k-full", "blip-coco-lora",
            "shapes-tiny", "shapes-tiny-style"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates(recipe):
    from captioning.data import HUB_DATASETS

    argv = ["--config", str(recipe)]
    if yaml.safe_load(recipe.read_text())["model"].get("trust_remote_code"):
        # a recipe may ask for remote code; only the command line grants it
        with pytest.raises(UserError, match="sets model.trust_remote_code"):
            load_config(argv)
        argv += ["--model.trust_remote_code", "true"]
    cfg = load_config(argv)
    assert cfg.name == recipe.stem
    src = cfg.data.source
    assert src in HUB_DATASETS or src.startswith("data/"), f"{recipe.name}: data.source {src} is neither a known " \
                                                           "hub dataset nor a local data/ folder"
    if cfg.quantization.load_in_4bit:
        assert cfg.lora.enabled
    # the resolved config round-trips through YAML
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
    recipe.write_text("model: {name_or_path: m}\ndata: {source: s}\n"
                      "optim: {learning_rate: 0.001, per_device_train_batch_size: 4}\n")
    cfg = load_config(["--config", str(recipe), "--optim.learning_rate", "1e-4"])
    assert cfg.optim.learning_rate == 1e-4  # flag beats YAML
    assert cfg.optim.per_device_train_batch_size == 4  # YAML beats default
    assert cfg.optim.gradient_accumulation_steps == 1  # default
    assert cfg.name == "r"


def test_flag_forms():
    cfg = build_config(BASE, ["--optim.learning_rate", "2e-4", "--lora.use_dora", "--no-lora.use_rslora",
                              "--optim.max_steps", "7", "--output-dir", "x",
                              "--optim.activation_checkpointing", "false",
                              "--data.image_splitting", "null", "--eval.metrics", "[CIDEr, Bleu_4]",
                              "--model.freeze_vision=false", "--eval.metrics+", "METEOR"])
    assert cfg.optim.learning_rate == 2e-4 and cfg.lora.use_dora and not cfg.lora.use_rslora
    assert cfg.optim.max_steps == 7 and cfg.optim.activation_checkpointing is False
    assert cfg.output.dir == "x" and cfg.data.image_splitting is None
    assert cfg.eval.metrics == ["CIDEr", "Bleu_4", "METEOR"] and cfg.model.freeze_vision is False


def _bool_keys(cls=TrainConfig, prefix=""):
    import dataclasses
    import typing

    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            yield from _bool_keys(tp, f"{prefix}{name}.")
        elif tp is bool:
            yield prefix + name


def test_every_bool_can_be_switched_off_from_the_command_line():
    import operator

    bools = list(_bool_keys())
    assert len(bools) >= 12
    for key in bools:
        base = BASE
        if key == "model.freeze_language":  # valid only for full fine-tuning of something else
            base = {**BASE, "lora": {"enabled": False}, "model": {**BASE["model"], "train_connector": True}}
        get = operator.attrgetter(key)
        assert get(build_config(base, [f"--no-{key}"])) is False, key
        assert get(build_config(base, [f"--{key}", "false"])) is False, key
        if key == "data.feature_cache" or key.startswith("quantization.load_in"):
            continue  # need other settings to be valid when on
        assert get(build_config(base, [f"--{key}"])) is True, key
        assert get(build_config(base, [f"--{key}", "true"])) is True, key


def test_factory_section_from_flags():
    cfg = build_config({"data": {"source": "s"}, "lora": {"enabled": False}},
                       ["--model.factory.size", "tiny", "--model.factory.seed", "3"])
    assert cfg.model.factory.family == "idefics3" and cfg.model.factory.seed == 3
    with pytest.raises(UserError, match="unknown option --seed"):
        build_config(BASE, ["--seed", "1"])  # every flag names its section


def test_optim_fields_are_training_arguments_fields():
    """The optim section goes to TrainingArguments as is: its names must be TrainingArguments'."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(OptimConfig)} - set(OptimConfig.OWN)
    assert names == set(OptimConfig().trainer_kwargs())
    assert names <= set(TrainingArguments.__dataclass_fields__), names - set(TrainingArguments.__dataclass_fields__)
    cfg = load_config(["--config", "training/recipes/smolvlm-coco-qlora.yaml"])
    args = TrainingArguments(output_dir="unused", use_cpu=True, **cfg.optim.trainer_kwargs())
    assert (args.learning_rate, args.gradient_accumulation_steps, args.warmup_steps) == (2e-4, 4, 0.03)


def test_the_names_other_scripts_use_are_pointed_at_ours(tmp_path):
    """No release ever shipped other optim names, so none is read as another; a recipe or a
    flag that uses one (lr, epochs, ...) is refused naming TrainingArguments' own."""
    recipe = tmp_path / "other.yaml"
    recipe.write_text(yaml.safe_dump({**BASE, "optim": {"lr": 3e-3}}))
    with pytest.raises(UserError, match=r"optim\.lr.*did you mean.*optim\.learning_rate"):
        load_config(["--config", str(recipe)])
    with pytest.raises(UserError, match=r"unknown option --optim\.epochs \(did you mean --optim\.num_train_epochs\?\)"):
        load_config(["--optim.epochs", "1"])


@pytest.mark.parametrize("args, match", [
    (["--optim.learning_rat", "1"], r"unknown option --optim\.learning_rat \(did you mean --optim\.learning_rate\?\)"),
    (["--bogus", "1"], "unknown option --bogus"),
    (["--optim.learning_rate", "fast"], r"^--optim\.learning_rate: expected a number, got 'fast'$"),
    (["--optim.per_device_train_batch_size", "2.5"], r"optim\.per_device_train_batch_size: expected an integer"),
    (["--lora.use_dora", "maybe"], r"--lora\.use_dora: expected true or false, got 'maybe'"),
    (["--no-optim.learning_rate"], r"unknown option --no-optim\.learning_rate"),
    (["--data.max_train_samples", "many"], r"--data\.max_train_samples: expected an integer or null, got 'many'"),
    (["--optim.max_steps", "0"], r"optim\.max_steps must be at least 1 \(or -1"),
    (["--optim.warmup_steps", "2.5"], r"optim\.warmup_steps must be a whole number of steps, or a fraction"),
    (["--quantization.load_in_4bit", "--quantization.load_in_8bit"], "load_in_4bit and quantization.load_in_8bit"),
    (["--quantization.load_in_4bit", "--no-lora.enabled"], r"quantization\.load_in_4bit needs lora\.enabled"),
    (["--quantization.load_in_8bit", "--lora.enabled", "false"], r"quantization\.load_in_8bit needs lora\.enabled"),
    (["--data.feature_cache", "--no-model.freeze_vision"], r"data\.feature_cache needs a frozen vision"),
    (["--data.feature_cache", "--model.train_connector"], r"model\.train_connector"),
    (["--eval.metric_for_best", "SPICE"], r"eval\.metric_for_best 'SPICE'"),
    (["--eval.metrics", "[CIDEr, Foo]"], r"eval\.metrics: unknown Foo"),
    (["--eval.metrics", "CIDEr,Bleu_4"], r"--eval\.metrics: expected a list"),
    (["--optim.precision", "fp8"], r"optim\.precision 'fp8'"),
    (["--data.caption_transform", "shout"], r"data\.caption_transform 'shout'"),
    (["--model.factory.family", "idefics3"], r"model\.name_or_path and model\.factory: set exactly one"),
    (["--output.save_every_steps", "3", "--eval.every_steps", "2"], r"output\.save_every_steps must be a multiple"),
    (["--model.freeze_language"], r"model\.freeze_language with lora\.enabled"),
    (["--model.freeze_language", "--no-lora.enabled"], "nothing would train"),
])
def test_errors_name_the_key(args, match):
    with pytest.raises(UserError, match=match):
        build_config(BASE, args)


def test_yaml_errors_name_the_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: m}\ndata: {source: s}\noptim: {learning_rat: 1}\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown key optim\.learning_rat \(did you mean optim\.learning_"):
        load_config(["--config", str(bad)])
    with pytest.raises(UserError, match=r"--config .*missing\.yaml: no such file"):
        load_config(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(UserError, match="mapping of sections"):
        load_config(["--config", str(tmp_path / "list.yaml")])
    (tmp_path / "broken.yaml").write_text("model: {name_or_path: m\n")
    with pytest.raises(UserError, match=r"broken\.yaml is not valid YAML"):
        load_config(["--config", str(tmp_path / "broken.yaml")])


def test_factory_with_lora_is_refused():
    with pytest.raises(UserError, match="model.factory builds an unsaved random base"):
        build_config({"model": {"factory": {"family": "idefics3"}}, "data": {"source": "s"}})


def test_cli_prints_config_and_reports_errors_in_one_line(capsys):
    from training.train import main

    assert main(["--config", "training/recipes/shapes-tiny.yaml", "--print-config", "--optim.learning_rate",
                 "0.01"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 0.01" in out and "factory:" in out and "name: shapes-tiny" in out
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
    ("optim.learning_rat", "optim.learning_rate"), ("optim.per_device_batch_size", "optim.per_device_train_batch_size"),
    ("data.sorce", "data.source"), ("lora.rank", "lora.r"), ("eval.metric", "eval.metrics")])
def test_unknown_keys_suggest_the_key_meant(key, suggestion):
    section, name = key.split(".")
    with pytest.raises(UserError, match=rf"unknown key {re.escape(key)} \(did you mean {re.escape(suggestion)}\?\)"):
        build_config({"model": {"name_or_path": "m"}, "data": {"source": "s"}, section: {name: 1}})
    with pytest.raises(UserError, match=rf"unknown option --{re.escape(key)} \(did you mean --{re.escape(suggestion)}"):
        build_config({"model": {"name_or_path": "m"}, "data": {"source": "s"}}, [f"--{key}", "1"])


def test_a_type_error_names_where_the_value_came_from(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: m}\ndata: {source: s}\noptim: {learning_rate: fast}\n")
    with pytest.raises(UserError, match=r"^.*r\.yaml: optim\.learning_rate: expected a number, got 'fast'$"):
        load_config(["--config", str(recipe)])
    recipe.write_text("model: {name_or_path: m}\ndata: {source: s}\n")
    with pytest.raises(UserError, match=r"^--optim\.learning_rate: expected a number, got 'fast'$"):
        load_config(["--config", str(recipe), "--optim.learning_rate", "fast"])
