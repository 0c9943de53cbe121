"""The command line of training: jsonargparse builds every ``--section.key`` flag from the
config dataclasses (their field docstrings are the help) and reads ``--config`` recipes;
here only what jsonargparse leaves to its caller: switches with ``--no-`` forms, and its error
reports turned into one line that names the flag or the recipe file. :func:`load_config` / :func:`build_config`
give a TrainConfig from flags or a recipe dict (training.config itself parses nothing)."""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

from captioning.cli import one_line
from captioning.errors import UserError
from captioning.files import special_file_problem
from captioning.safe_yaml import parse_yaml
from training.config import TrainConfig

_MODE = "training-recipe"


#: what other training scripts call some optim keys: named in "did you mean" (the keys are
#: TrainingArguments' own names)
OTHER_NAMES = {"lr": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
               "grad_accum": "gradient_accumulation_steps", "optimizer": "optim", "scheduler": "lr_scheduler_type",
               "warmup_ratio": "warmup_steps", "label_smoothing": "label_smoothing_factor",
               "gradient_checkpointing": "activation_checkpointing"}

def build_parser(prog: str = "python -m training.train"):
    """The jsonargparse parser of every config key (``--section.key``) and ``--config``."""
    import argparse

    import jsonargparse
    from jsonargparse import ActionConfigFile, ArgumentParser

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    jsonargparse.set_loader(_MODE, lambda text: _load_yaml(text, []), exceptions=(ValueError,))
    parser = ArgumentParser(
        prog=prog, usage=f"{prog} --config RECIPE.yaml [--section.key VALUE ...]", exit_on_error=False,
        allow_abbrev=False, parser_mode=_MODE, print_config=None,
        description="Fine-tune a captioning model. Defaults < --config recipe < flags; a switch is --key, "
                    "--no-key or --key true|false; a list is [a, b].")
    parser.add_argument("--config", action=ActionConfigFile, help="recipe YAML (training/recipes/*.yaml)")
    parser.add_argument("--output-dir", dest="output.dir", help=argparse.SUPPRESS)
    parser.add_class_arguments(TrainConfig, None, as_group=True)
    # jsonargparse takes a bool field as --key true|false only; switches also take a bare --key
    # (true) and --no-key (false), as the Trainer's flags and this CLI always did
    for action in list(parser._actions):
        if getattr(action, "_typehint", None) in (bool, bool | None) and action.option_strings:
            action.nargs, action.const = "?", True
            parser.add_argument("--no-" + action.dest, dest=action.dest, action="store_const", const=False,
                                help=argparse.SUPPRESS)
    return parser


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """The config from ``--config FILE`` plus ``--section.key value`` flags."""
    return parse(build_parser(), list(argv or []))[0]


def build_config(recipe: dict | None = None, argv: list[str] | None = None) -> TrainConfig:
    """defaults < ``recipe`` (a nested dict, as from YAML) < flags ``argv``."""
    import json

    return load_config((["--config", json.dumps(recipe)] if recipe else []) + list(argv or []))


def _load_yaml(text: str, argv: list[str]):
    """jsonargparse's loader of recipes and of flag values: captioning.safe_yaml.parse_yaml (no
    alias bombs, no duplicate keys, no NaN), old optim keys renamed. Its errors name the flag
    whose value ``text`` is, else the recipe."""
    flag = next((a.split("=", 1)[0] if "=" in a else argv[i - 1] for i, a in enumerate(argv)
                 if a.startswith("--") and a.endswith(f"={text}") or (i and a == text and argv[i - 1] != "--config")),
                None)
    doc = parse_yaml(text, flag or f"--config {_recipe(argv)}")
    if flag is None and isinstance(doc, dict):
        # jsonargparse passes over a section it does not know when it is empty (foo: {})
        known = {f.name for f in dataclasses.fields(TrainConfig)} | {"config"}
        unknown = [str(k) for k in doc if k not in known]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            sections = ", ".join(sorted(known - {"config"}))
            raise UserError(f"--config {_recipe(argv)}: unknown section {unknown[0]!r}"
                            + (f" (did you mean {hint[0]}?)" if hint else f"; sections: {sections}"))
        # an empty section (`data:` with nothing under it) is null in YAML: its defaults, as for {}
        doc = {k: v for k, v in doc.items() if v is not None or k not in known - {"name", "config"}}
        for key, value in doc.items():
            if key not in ("name", "config") and value is not None and not isinstance(value, dict):
                raise UserError(f"--config {_recipe(argv)}: {key} must be a mapping of keys ({key}: {{...}}), got "
                                f"{type(value).__name__} {str(value)[:40]!r}")
    return doc


def parse(parser, argv: list[str]):
    """(TrainConfig, the parsed namespace) from ``argv``; a mistake is one UserError line."""
    import jsonargparse
    import yaml
    from jsonargparse import ArgumentError

    argv = list(argv)
    for i, a in enumerate(argv):  # jsonargparse would block reading a FIFO, loop on a link loop
        value = a.split("=", 1)[1] if a.startswith("--config=") else argv[i + 1] if a == "--config" and i + 1 < len(
            argv) else None
        problem = special_file_problem(Path(value)) if value and not value.lstrip().startswith("{") else None
        if problem:
            raise UserError(f"--config {value} is {problem}")
    jsonargparse.set_loader(_MODE, lambda text: _load_yaml(text, argv), exceptions=(ValueError,))
    try:
        ns = parser.parse_args(argv)
        if ns.get("name") is None:
            recipes = [p for p in (ns.get("config") or []) if p is not None]
            ns.name = Path(str(recipes[-1])).stem if recipes else "run"
        init = parser.instantiate(ns)  # each section's __post_init__ raises its own UserError
    except (ArgumentError, yaml.YAMLError) as err:
        raise _usage_error(err, argv, parser) from None
    cfg = TrainConfig(**{f.name: init[f.name] for f in dataclasses.fields(TrainConfig)})
    source = _recipe(argv)
    if cfg.model.trust_remote_code and source != "config" and not _on_command_line(argv, "model.trust_remote_code"):
        # a recipe or saved train_config.yaml may come from anyone: a file never switches on code execution
        raise UserError(f"--config {source} sets model.trust_remote_code: training would run the Python code "
                        f"shipped with {cfg.model.name_or_path or 'the base model'}; a recipe cannot switch that on: "
                        "pass --model.trust_remote_code true on the command line if you trust that code")
    return cfg, init


def _on_command_line(argv: list[str], key: str) -> bool:
    """Whether ``argv`` itself sets ``--key`` to true (bare, ``true`` or ``=true``)."""
    for i, a in enumerate(argv):
        if a == f"--{key}":
            nxt = argv[i + 1].lower() if i + 1 < len(argv) else ""
            return nxt in ("", "true", "yes", "1") or nxt.startswith("--")
        if a.startswith(f"--{key}="):
            return a.split("=", 1)[1].lower() in ("true", "yes", "1")
    return False


def _usage_error(err: Exception, argv: list[str], parser) -> UserError:
    """jsonargparse's report of a bad key or value as one line naming the flag or the recipe,
    with the key meant for an unknown one. Read from its wording; a report worded otherwise
    (another jsonargparse version) is still one line, as jsonargparse wrote it."""
    import yaml

    text, source = one_line(err), _recipe(argv)
    if isinstance(err, yaml.YAMLError):
        return UserError(f"--config {source}: not valid YAML ({text})")
    if text.startswith("Unexpected config"):
        return UserError(f"--config {source}: a recipe is a mapping of sections (model:, data:, ...)")
    if "File does not exist" in text:
        missing = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--config" and not Path(a).exists()]
        return UserError(f"--config {missing[0] if missing else source}: no such file (recipes live in "
                         "training/recipes/)")
    unknown = (re.search(r"unrecognized arguments: --(\S+)", text)
               or re.search(r"Option '([\w.]+)' is not accepted", text)
               or re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text))
    if unknown:
        flag = text.startswith("unrecognized")
        key = ".".join(g for g in unknown.groups() if g).split("=")[0]
        section, _, name = key.rpartition(".")
        keys = [o[2:] for a in parser._actions for o in a.option_strings if o[2:].rpartition(".")[0] == section]
        hint = f"{section}.{OTHER_NAMES[name]}" if section == "optim" and name in OTHER_NAMES else None
        hint = hint or next(iter(difflib.get_close_matches(key, keys, n=1, cutoff=0.6)), None)
        hint = f" (did you mean {'--' if flag else ''}{hint}?)" if hint else ""
        if flag:
            return UserError(f"unknown option --{key}{hint}; see --help for every key")
        return UserError(f"{source}: unknown key {key}{hint}")
    keys = re.findall(r'Parser key "([\w.]+)"', text)
    if keys:
        key = ".".join(keys)  # a nested section's key comes as a second "Parser key"
        types = re.findall(r"Expected a <class '(\w+)'>", text)
        value = re.search(r"(?:Got value|Given value): (.*?)(?: Given value type.*)?(?: - Expected.*)?$", text)
        want = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t) for t in types)) or text.split(": ", 1)[-1]
        why = f"expected {want}" + (f", got {value[1]!r}" if value else "")
        given = any(a.split("=")[0] in (f"--{key}", f"--no-{key}") or a.startswith(f"--{keys[0]}.") for a in argv)
        return UserError(f"--{key}: {why}" if given else f"{source}: {key}: {why}")
    return UserError(text)


_TYPE_NAMES = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "text", "list": "a list",
               "NoneType": "null"}


def _recipe(argv: list[str]) -> str:
    """The --config argument of ``argv`` (for messages)."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return "config" if argv[i + 1].lstrip().startswith("{") else argv[i + 1]  # build_config's dict
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return "config"
