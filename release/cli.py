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
@click.option("--adapter", required=True, type=PATH, help="LoRA adapter folder (training output)")
@click.option("--out", required=True, type=PATH, help="folder for the merged model")
@click.option("--base", help="base model id or folder (default: from adapter_config.json / train_config.yaml)")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="storage dtype of the merged weights (auto: the base checkpoint's)")
@click.option("--force", is_flag=True, help="replace a non-empty --out folder")
@click.option("--probes", type=int, default=4, show_default=True, help="probe images for the equivalence check")
@click.option("--max-new-tokens", type=int, default=20, show_default=True, help="caption length in the check")
@click.option("--tolerance", type=float, help="max |logit difference| allowed (default by dtype: fp32 1e-3, "
                                              "fp16 5e-2, bf16 0.25)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps")
@click.option("--trust-remote-code", is_flag=True, help="allow a base that ships its own model code (bridge); "
              "never on by default, and only this flag turns it on (an adapter whose train_config.yaml asks for "
              "it is refused without it)")
@click.option("--allow-other-base", is_flag=True, help="with --base: merge into a base other than the one the "
              "adapter was trained on, on purpose (recorded in merge_check.json and said on the card)")
def merge(adapter, out, base, dtype, force, probes, max_new_tokens, tolerance, device, trust_remote_code,
          allow_other_base):
    """Merge a LoRA adapter into its full-precision base and check the result.

    \b
      release merge --adapter outputs/style --out releases/style-merged
      release merge --adapter outputs/qlora --base HuggingFaceTB/SmolVLM-256M-Instruct --dtype bf16 --out rel/q

    The merged model is reloaded and compared with base + adapter on probe images
    (max |logit difference|, identical greedy captions); a failing check writes nothing.
    """
    from release.merge import MergeOptions, merge_adapter

    result = merge_adapter(MergeOptions(adapter=adapter, out=out, base=base, dtype=dtype, force=force, probes=probes,
                                        max_new_tokens=max_new_tokens, tolerance=tolerance, device=device,
                                        trust_remote_code=trust_remote_code, allow_other_base=allow_other_base),
                           log=_log)
    _log(f"merged model: {result.out}")


@cli.command()
@click.option("--model", "model_dir", required=True, type=PATH,
              help="release, merged-model or training output folder")
@click.option("--metrics", type=PATH, help="metrics.json from eval/run.py generate "
                                                                 "(default: the one in --model)")
@click.option("--train-config", type=PATH, help="train_config.yaml (default: the one in --model)")
@click.option("--logs", type=EXISTING, help="training output folder with logs/ for the loss curve "
                                                              "(default: --model)")
@click.option("--template", default="model_card", show_default=True, help="template name in model_cards/ or a file")
@click.option("--repo-id", help="repo id the card's snippets load (default: the --model folder)")
@click.option("--license", "license_", type=LICENSE, help="licence id when the base model's cannot be read")
@click.option("--out", required=True, type=PATH, help="README.md to write (badges and the "
                                                                             "loss curve go beside it)")
def card(model_dir, metrics, train_config, logs, template, repo_id, license_, out):
    """Render a model card (README.md) from a template and the release's records.

    \b
      release card --model releases/style --metrics runs/eval/metrics.json --out releases/style/README.md

    Missing inputs (no metrics, no logs, no train_config.yaml) give a visible
    "not measured" section, never invented numbers. Renders offline.
    """
    from release.card import collect_inputs, write_card
    from release.hub import check_repo_id

    if repo_id is not None:
        check_repo_id(repo_id)  # the card's snippets load it: one the Hub would refuse helps nobody
    folder = Path(model_dir)
    read = {f"--model's {p.name}": p for p in (folder.iterdir() if folder.is_dir() else ()) if p.name != "README.md"}
    check_not_input(out, "--out", read | {"--metrics": metrics, "--train-config": train_config, "--template": template})
    inputs = collect_inputs(model_dir, repo_id=repo_id, metrics=metrics, train_config=train_config, logs=logs,
                            license=license_)
    path = write_card(inputs, out, template=template)
    _log(f"model card: {path}")


@cli.command()
@click.option("--repo-id", required=True, help="NAMESPACE/NAME on the Hub (also named in the card)")
@click.option("--adapter", type=PATH, help="LoRA adapter folder (training output)")
@click.option("--merge", "merge_", is_flag=True, help="merge --adapter into its base and release the full model")
@click.option("--model", type=PATH, help="full model folder (e.g. from release merge)")
@click.option("--eval", "eval_dir", type=PATH,
              help="--out folder of eval/run.py generate (metrics.json, predictions.json)")
@click.option("--private", is_flag=True, help="create the repo private")
@click.option("--revision", help="branch to push to (created if missing; default main)")
@click.option("--tag", help="tag the pushed commit")
@click.option("--commit-message", help="commit message (default: 'Release: upload folder')")
@click.option("--dry-run", is_flag=True, help="print what would be uploaded where; write nothing")
@click.option("--to-dir", type=PATH, help="write the repo layout to this folder instead of "
                                                                "the Hub (offline)")
@click.option("--force", is_flag=True, help="replace a non-empty --to-dir")
@click.option("--token", help="Hub token (default: HF_TOKEN, then `hf auth login`); prefer HF_TOKEN")
@click.option("--base", help="base model for --merge (default: from the adapter's config)")
@click.option("--allow-other-base", is_flag=True, help="with --merge --base: merge into a base other than the one "
              "the adapter was trained on, on purpose (the card says so)")
@click.option("--base-repo-id", help="Hub id of a local base model (named in the card and configs instead of "
              "a local path; required for an adapter release of a local base)")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="storage dtype for --merge")
@click.option("--probes", type=int, default=4, show_default=True, help="probe images for the --merge check")
@click.option("--template", default="model_card", show_default=True, help="model card template")
@click.option("--license", "license_", type=LICENSE, help="licence id when the base model's cannot be read")
@click.option("--logs", type=EXISTING, help="training output folder for the loss curve")
def push(repo_id, adapter, merge_, model, eval_dir, private, revision, tag, commit_message, dry_run, to_dir, force,
         token, base, allow_other_base, base_repo_id, dtype, probes, template, license_, logs):
    """Assemble a release (weights, processor, card, eval record) and publish it.

    \b
      release push --repo-id me/smolvlm-style --adapter outputs/style --merge --eval runs/style-eval
      release push --repo-id me/smolvlm-style --model releases/style --tag v1.0
      release push --repo-id demo/shapes-style --adapter outputs/style --merge --to-dir demo_out/release

    Pushing an unchanged release again makes no new commit; an interrupted push
    finishes when the same command is run again.
    """
    from release.push import PushOptions
    from release.push import push as do_push

    do_push(PushOptions(repo_id=repo_id, adapter=adapter, model=model, merge=merge_, eval_dir=eval_dir,
                        private=private, revision=revision, tag=tag, commit_message=commit_message, dry_run=dry_run,
                        to_dir=to_dir, token=token, force=force, base=base, allow_other_base=allow_other_base,
                        base_repo_id=base_repo_id,
                        dtype=dtype, probes=probes,
                        template=template, license=license_, logs=logs), log=_log)


@cli.command()
@click.option("--repo-id", required=True, help="NAMESPACE/NAME of the Space")
@click.option("--models", required=True, help="comma-separated hub ids (or folders with --to-dir) to serve")
@click.option("--to-dir", type=PATH, help="write the Space folder here instead of the Hub")
@click.option("--hardware", help="Space hardware (e.g. cpu-basic, t4-small, zero-a10g): requested on the Hub and "
              "written as the README's suggested_hardware (default there: cpu-basic)")
@click.option("--private", is_flag=True, help="create the Space private")
@click.option("--dry-run", is_flag=True, help="print what would be uploaded where; write nothing")
@click.option("--force", is_flag=True, help="replace a non-empty --to-dir")
@click.option("--token", help="Hub token (default: HF_TOKEN, then `hf auth login`)")
@click.option("--title", help="Space title (default: space/README.md's)")
@click.option("--short-description", help="one line on the Space's thumbnail, at most 60 characters (default: "
                                          "space/README.md's)")
@click.option("--tags", help="comma-separated Space tags (default: space/README.md's, else image-captioning, "
                             "image-to-text, vision-language-model; \"\" for none)")
@click.option("--python-version", help="Python the Space runs, 3.x or 3.x.x (default: this interpreter's major.minor)")
def space(repo_id, models, to_dir, hardware, private, dry_run, force, token, title, short_description, tags,
          python_version):
    """Deploy space/ as a Gradio Space serving the given models.

    \b
      release space --repo-id me/captioner-demo --models me/smolvlm-style,HuggingFaceTB/SmolVLM-256M-Instruct
      release space --repo-id demo/space --models demo_out/release --to-dir demo_out/space

    The README's front matter lists the Hub ids in models: (the Space shows on each model's
    page) and preload_from_hub (fetched at build), with this gradio as sdk_version.
    """
    from release.space import SpaceOptions, deploy_space

    deploy_space(SpaceOptions(repo_id=repo_id, models=models.split(","), to_dir=to_dir, hardware=hardware,
                              private=private, dry_run=dry_run, token=token, force=force, title=title,
                              short_description=short_description,
                              tags=None if tags is None else tags.split(","), python_version=python_version),
                 log=_log)


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
