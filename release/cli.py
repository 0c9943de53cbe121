"""The ``release`` command: merge | card | push | space.

    release merge --adapter outputs/style --out releases/style
    release card --model releases/style --metrics runs/eval/metrics.json --out releases/style/README.md
    release push --repo-id me/smolvlm-style --adapter outputs/style --merge --eval runs/eval
    release space --repo-id me/captioner-demo --models me/smolvlm-style,HuggingFaceTB/SmolVLM-256M-Instruct

(``python -m release ...`` is the same command.) A mistake prints one line,
``error: ...``, and exits with status 2; ``--debug`` anywhere on the command line
shows the full traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from captioning.cli import DEBUG_FLAG, guarded, one_line
from captioning.files import check_not_input
from captioning.options import click_options
from release.card import CardOptions
from release.merge import MergeOptions
from release.push import PushOptions
from release.space import SpaceOptions


def _quiet_libraries() -> None:
    """Progress bars and info logs of transformers/huggingface_hub would bury our own lines."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # deprecation notices from inside the libraries say nothing the user can act on
    for module in ("transformers", "peft", "torch", "huggingface_hub", "httpx2"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - both are requirements
        pass


class ReleaseGroup(click.Group):
    """A click group that turns UserError into one line + exit 2 (unless --debug)."""

    def parse_args(self, ctx, args):
        # --debug may follow any subcommand; strip it here so each command need not declare it
        ctx.meta["release.debug"] = ctx.meta.get("release.debug", False) or DEBUG_FLAG in args
        return super().parse_args(ctx, [a for a in args if a != DEBUG_FLAG])

    def invoke(self, ctx):
        # click's own exits and usage errors are not user_message()s: guarded re-raises them
        result = []
        rc = guarded(lambda: result.append(super(ReleaseGroup, self).invoke(ctx)),
                     debug=ctx.meta.get("release.debug", False))
        if rc:
            ctx.exit(rc)
        return result[0] if result else None


class _Path(click.Path):
    """click.Path that refuses an empty value: "" would quietly mean the current folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("empty value; pass a path", param, ctx)
        return super().convert(value, param, ctx)


PATH = _Path(path_type=Path)


class _Text(click.ParamType):
    """Text that is not empty."""

    name = "text"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("empty value", param, ctx)
        return value


TEXT = _Text()


class _LicenseId(_Text):
    """A licence identifier as the Hub's card metadata takes it (apache-2.0, mit, other: lower
    case, digits, ``.+-``); a name with spaces or capitals would be refused only at upload."""

    name = "licence id"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if isinstance(value, str) and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value):
            self.fail(f"{value!r} is not a licence identifier: pass one like apache-2.0, mit or other (the Hub's "
                      "list: https://huggingface.co/docs/hub/repositories-licenses)", param, ctx)
        return value


LICENSE = _LicenseId()
#: an input that must be there (an option that only adds to the output, like --logs, would
#: otherwise be skipped without a word when misspelled)
EXISTING = _Path(path_type=Path, exists=True)
#: click types of the settings classes' fields (captioning.options.click_options): paths and text
#: never empty, --logs must exist, --license is a licence id
TYPES = {"Path": PATH, "str": TEXT, "logs": EXISTING, "license": LICENSE}


def _log(msg: str) -> None:
    click.echo(msg)


@click.group(cls=ReleaseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
def cli(debug: bool) -> None:
    """Merge adapters, render model cards, and publish models and the Space.

    \b
      release merge --adapter outputs/style --out releases/style
      release push --repo-id me/smolvlm-style --adapter outputs/style --merge --eval runs/eval
    """
    _quiet_libraries()


@cli.command()
@click_options(MergeOptions, TYPES)
def merge(**flags):
    """Merge a LoRA adapter into its full-precision base and check the result.

    \b
      release merge --adapter outputs/style --out releases/style-merged
      release merge --adapter outputs/qlora --base HuggingFaceTB/SmolVLM-256M-Instruct --dtype bf16 --out rel/q

    The merged model is reloaded and compared with base + adapter on probe images
    (max |logit difference|, identical greedy captions); a failing check writes nothing.
    """
    from release.merge import merge_adapter

    result = merge_adapter(MergeOptions(**flags), log=_log)
    _log(f"merged model: {result.out}")


@cli.command()
@click_options(CardOptions, TYPES)
def card(**flags):
    """Render a model card (README.md) from a template and the release's records.

    \b
      release card --model releases/style --metrics runs/eval/metrics.json --out releases/style/README.md

    Missing inputs (no metrics, no logs, no train_config.yaml) give a visible
    "not measured" section, never invented numbers. Renders offline.
    """
    from release.card import collect_inputs, write_card
    from release.hub import check_repo_id

    o = CardOptions(**flags)
    if o.repo_id is not None:
        check_repo_id(o.repo_id)  # the card's snippets load it: one the Hub would refuse helps nobody
    folder = Path(o.model_dir)
    read = {f"--model's {p.name}": p for p in (folder.iterdir() if folder.is_dir() else ()) if p.name != "README.md"}
    check_not_input(o.out, "--out", read | {"--metrics": o.metrics, "--train-config": o.train_config,
                                            "--template": o.template})
    inputs = collect_inputs(o.model_dir, repo_id=o.repo_id, metrics=o.metrics, train_config=o.train_config,
                            logs=o.logs, license=o.license)
    path = write_card(inputs, o.out, template=o.template)
    _log(f"model card: {path}")


@cli.command()
@click_options(PushOptions, TYPES)
def push(**flags):
    """Assemble a release (weights, processor, card, eval record) and publish it.

    \b
      release push --repo-id me/smolvlm-style --adapter outputs/style --merge --eval runs/style-eval
      release push --repo-id me/smolvlm-style --model releases/style --tag v1.0
      release push --repo-id demo/shapes-style --adapter outputs/style --merge --to-dir demo_out/release

    Pushing an unchanged release again makes no new commit; an interrupted push
    finishes when the same command is run again.
    """
    from release.push import push as do_push

    do_push(PushOptions(**flags), log=_log)


@cli.command()
@click_options(SpaceOptions, TYPES)
def space(**flags):
    """Deploy space/ as a Gradio Space serving the given models.

    \b
      release space --repo-id me/captioner-demo --models me/smolvlm-style,HuggingFaceTB/SmolVLM-256M-Instruct
      release space --repo-id demo/space --models demo_out/release --to-dir demo_out/space

    The README's front matter lists the Hub ids in models: (the Space shows on each model's
    page) and preload_from_hub (fetched at build), with this gradio as sdk_version.
    """
    from release.space import deploy_space

    deploy_space(SpaceOptions(**flags), log=_log)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the ``release`` group and return its exit code."""
    try:
        # standalone_mode=False: click returns ctx.exit()'s code instead of calling sys.exit
        rc = cli.main(args=sys.argv[1:] if argv is None else list(argv), prog_name="release", standalone_mode=False)
    except click.UsageError as e:  # one line, like every other command's usage mistake
        command = e.ctx.command_path if e.ctx is not None else "release"
        click.echo(f"error: {command}: {one_line(e.format_message())} (see --help)", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    return rc if isinstance(rc, int) else 0


# every text option of every command: "" is never a value (a license, a repo id, a revision)
for _command in cli.commands.values():
    for _param in _command.params:
        if isinstance(_param, click.Option) and _param.type is click.STRING:
            _param.type = TEXT

if __name__ == "__main__":
    sys.exit(main())
