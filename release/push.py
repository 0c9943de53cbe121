"""Assemble a release folder and publish it to the Hub (or to a local folder).

    release push --repo-id me/smolvlm-style --adapter outputs/style --merge --eval runs/style-eval
    release push --repo-id me/smolvlm-style --model releases/style --tag v1.0
    release push --repo-id demo/tiny --adapter outputs/style --merge --to-dir demo_out/release   # offline

A release folder is exactly what the Hub repo holds: weights (or the adapter),
config, processor/tokenizer files, chat template, generation_config.json,
train_config.yaml, merge_check.json (after --merge), README.md (the card, with its
badges and loss curve) and, from ``--eval``, metrics.json and predictions.json.

Publishing is release/publish.py (``HfApi.upload_folder``): an unchanged folder makes
no commit; otherwise a commit adds what changed and deletes what the release no
longer holds. An interrupted push finishes when the same command is run again.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from captioning.errors import UserError
from captioning.files import check_model_folder, output_lock, partial_folder, read_json_file, write_atomic, write_json
from captioning.fingerprints import model_fingerprint, short, weights_fingerprint
from captioning.options import option, same_as
from captioning.portability import local_paths_in, scrub_paths
from captioning.records import (
    KIND_MERGE_CHECK,
    KIND_RELEASE,
    MERGE_CHECK,
    METRICS,
    RELEASE,
    TRAIN_CONFIG,
    EvalRecord,
    TrainConfigRecord,
    model_config,
    read_record,
    write_record,
)
from release import card as card_mod
from release import hub
from release.compat import make_portable
from release.merge import MergeOptions, check_adapter_folder, has_full_weights, merge_adapter, recorded_base
from release.publish import PublishResult, describe_folder, local_tree, publish_folder, write_to_dir

#: files a release takes from a model or adapter folder (training leftovers stay behind)
MODEL_FILES = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "*.model", "chat_template.json", "chat_template.jinja",
    "adapter_config.json", "train_config.yaml", "merge_check.json", "release.json",
)
EVAL_FILES = ("metrics.json", "predictions.json")


@dataclass
class PushOptions:
    """What ``release push`` does; its flags are these fields (captioning.options.click_options)."""

    repo_id: str = option(help="NAMESPACE/NAME on the Hub (also named in the card)")
    adapter: Path | None = same_as(MergeOptions, "adapter", default=None)
    merge: bool = option(False, help="merge --adapter into its base and release the full model")
    model: Path | None = option(None, help="full model folder (e.g. from release merge)")
    eval_dir: Path | None = option(None, flag="--eval",
                                   help="--out folder of eval/run.py generate (metrics.json, predictions.json)")
    private: bool = option(False, help="create the repo private")
    revision: str | None = option(None, help="branch to push to (created if missing; default main)")
    tag: str | None = option(None, help="tag the pushed commit")
    commit_message: str | None = option(None, help="commit message (default: 'Release: upload folder')")
    dry_run: bool = option(False, help="print what would be uploaded where; write nothing")
    to_dir: Path | None = option(None, help="write the repo layout to this folder instead of the Hub (offline)")
    force: bool = option(False, help="replace a non-empty --to-dir")
    token: str | None = option(None, help="Hub token (default: HF_TOKEN, then `hf auth login`); prefer HF_TOKEN")
    # what --merge does, as release merge does it
    base: str | None = same_as(MergeOptions, "base")
    allow_other_base: bool = same_as(MergeOptions, "allow_other_base")
    #: the Hub id of a local base (what the card, adapter_config.json and train_config.yaml name)
    base_repo_id: str | None = option(None, help="Hub id of a local base model (named in the card and configs "
                                      "instead of a local path; required for an adapter release of a local base)")
    dtype: str = same_as(MergeOptions, "dtype")
    probes: int = same_as(MergeOptions, "probes")
    # the card, as release card renders it
    template: str = same_as(card_mod.CardOptions, "template")
    license: str | None = same_as(card_mod.CardOptions, "license")
    logs: Path | None = same_as(card_mod.CardOptions, "logs")

    def __post_init__(self):
        hub.check_repo_id(self.repo_id)
        if (self.adapter is None) == (self.model is None):
            raise UserError("pass exactly one of --adapter DIR (a LoRA adapter) or --model DIR (a full model)")
        if self.merge and self.adapter is None:
            raise UserError("--merge needs --adapter DIR (a --model folder is already a full model)")
        if self.to_dir is not None and (self.tag or self.private or self.revision):
            raise UserError("--to-dir writes a local folder: --tag, --private and --revision only apply to the Hub")
        if self.base_repo_id is not None:
            hub.check_repo_id(self.base_repo_id)
        for name in ("adapter", "model", "eval_dir", "to_dir", "logs"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, Path(v).expanduser())
        if self.to_dir is not None:
            self.to_dir = self.to_dir.resolve()  # "." or "sub/.." have no name to put a folder beside


# ---------------------------------------------------------------- assembling
def release_files(folder: Path, patterns=MODEL_FILES) -> list[Path]:
    """The files of ``folder`` (top level) that belong in a release."""
    check_model_folder(folder)
    out = [p for p in sorted(folder.iterdir()) if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    if model_config(folder).get("auto_map"):
        # models with their own code need it beside the weights (trust_remote_code)
        out += [p for p in sorted(folder.glob("*.py")) if p not in out]
    return out


def _copy_files(files: list[Path], dest: Path) -> None:
    for f in files:
        shutil.copy2(f, dest / f.name)


def _check_eval_dir(eval_dir: Path) -> EvalRecord:
    if not eval_dir.is_dir():
        raise UserError(f"--eval {eval_dir}: no such folder (pass the --out folder of eval/run.py generate)")
    if not (eval_dir / METRICS).is_file():
        raise UserError(f"--eval {eval_dir}: no metrics.json there; pass the --out folder of eval/run.py generate")
    return EvalRecord.read(eval_dir, what="--eval")


def _eval_files(record: EvalRecord) -> list[Path]:
    return [record.path.parent / n for n in EVAL_FILES if (record.path.parent / n).is_file()]


def released_identity(dest: Path, opts: PushOptions) -> dict[str, str | None]:
    """Fingerprints of what the release in ``dest`` holds: ``weights`` (the model, or the
    adapter for an adapter release) and, for a merged or adapter release, the ``base`` and
    ``adapter`` it is made of."""
    weights = weights_fingerprint(dest)
    if opts.adapter is None:
        # a merged model (release merge, or a merged release pushed again) names its parts in
        # merge_check.json, which holds only when it describes these very weights
        check = read_record(dest, KIND_MERGE_CHECK) if (dest / MERGE_CHECK).is_file() else {}
        if check.get("merged_fingerprint") != weights:
            check = {}
        return {"weights": weights, "base": check.get("base_fingerprint"), "adapter": check.get("adapter_fingerprint")}
    if opts.merge:
        check = read_record(dest, KIND_MERGE_CHECK)
        return {"weights": weights, "base": check.get("base_fingerprint"), "adapter": check.get("adapter_fingerprint")}
    base, revision, _ = recorded_base(opts.adapter)
    return {"weights": None, "base": model_fingerprint(opts.base or base, revision), "adapter": weights}


def check_eval_identity(record: EvalRecord, released: dict[str, str | None], where: str) -> None:
    """Refuse an eval record that was not measured on the released weights: on them directly,
    or on exactly the base + adapter they were merged from. No override: a card never shows
    another model's numbers."""
    got = record.weights
    if not got["model"]:
        raise UserError(f"{where}: {record.path} records no weights fingerprint (written before records carried "
                        "one): run eval/run.py generate again on this model and pass that --out")
    direct = got["adapter"] is None and released["weights"] is not None and got["model"] == released["weights"]
    parts = (got["adapter"] is not None and got["adapter"] == released["adapter"]
             and released["base"] is not None and got["model"] == released["base"])
    if direct or parts:
        return
    measured = f"weights {short(got['model'])}" + (f" + adapter {short(got['adapter'])}" if got["adapter"] else "")
    mine = (f"weights {short(released['weights'])}" if released["weights"] else "") + (
        f" (base {short(released['base'])} + adapter {short(released['adapter'])})" if released["adapter"] else "")
    raise UserError(f"{where}: {record.path} measured {measured}, not this release's {mine.strip()}: evaluate "
                    "the released model (python eval/run.py generate --model ...) and pass that --out")


def assemble(opts: PushOptions, dest: Path, log: Callable[[str], None] = print) -> Path:
    """Build the release folder in ``dest`` (created; must not hold files). Returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    record = _check_eval_dir(opts.eval_dir) if opts.eval_dir else None
    where = f"--eval {opts.eval_dir}"
    train_dir = opts.adapter or opts.model
    if opts.adapter is not None:
        check_adapter_folder(opts.adapter)
        if opts.merge:
            merge_adapter(MergeOptions(adapter=opts.adapter, out=dest, base=opts.base, dtype=opts.dtype,
                                       probes=opts.probes, force=True, allow_other_base=opts.allow_other_base),
                          log=log)
        else:
            _copy_files(release_files(opts.adapter), dest)
            make_portable(dest)
    else:
        model = opts.model
        if not model.is_dir():
            raise UserError(f"--model {model}: no such folder")
        if (model / "adapter_config.json").is_file():
            raise UserError(f"--model {model} holds a LoRA adapter: pass it as --adapter (add --merge to merge it)")
        if not has_full_weights(model):
            raise UserError(f"--model {model}: no config.json + weights there; pass a saved model folder")
        if not any(model.glob("*.safetensors")):
            raise UserError(f"--model {model}: weights are not safetensors; load and save_pretrained() it first")
        _copy_files(release_files(model), dest)
        if record is None and (model / METRICS).is_file():
            record = EvalRecord.find(model)
            if record is not None:
                where = f"--model {model}"
                log(f"using the eval record in {model} (metrics.json)")
            else:
                log(f"{model / METRICS} holds validation metrics from training, not an eval record: pass --eval DIR "
                    "(the --out of eval/run.py generate) to publish scores")
        changes = make_portable(dest)
        if changes:
            log("made loadable by transformers 4.x and 5: " + "; ".join(changes))
    eval_files = []
    if record is not None:
        check_eval_identity(record, released_identity(dest, opts), where)
        eval_files = _eval_files(record)
    _copy_files(eval_files, dest)
    inputs = card_mod.collect_inputs(dest, repo_id=opts.repo_id, logs=opts.logs or train_dir, license=opts.license)
    inputs = make_release_portable(dest, opts, inputs)
    card_mod.write_card(inputs, dest / "README.md", template=opts.template)
    leaks = {p.name: local_paths_in(p.read_text(encoding="utf-8", errors="replace"))
             for p in local_tree(dest).values() if p.suffix in (".json", ".yaml", ".md", ".jinja", ".txt")}
    leaks = {k: v for k, v in leaks.items() if v}
    if leaks:  # every record was scrubbed: a path left is in a file this toolkit does not know
        shown = "; ".join(f"{k} holds {v[0]}" for k, v in leaks.items())
        raise UserError(f"the release would publish paths of this machine ({shown}): remove them from that file in "
                        f"{opts.adapter or opts.model} and push again")
    if not eval_files:
        log("no --eval folder: the card says the model was not evaluated")
    return dest


# ---------------------------------------------------------------- portability
def _release_base(opts: PushOptions) -> tuple[str | None, str | None, str | None, bool]:
    """(the base as the training records name it, its Hub id or None, its weights fingerprint,
    whether the release is built on a model) for the release ``opts`` describes."""
    if opts.adapter is not None:
        name, revision, _ = recorded_base(opts.adapter)
        if opts.merge and opts.base:
            name, revision = opts.base, None
    else:
        if (opts.model / RELEASE).is_file():  # pushed again: the manifest knows the base
            base = read_record(opts.model, KIND_RELEASE).get("base") or {}
            return base.get("id"), opts.base_repo_id or base.get("id"), base.get("fingerprint"), bool(
                base.get("id") or base.get("local"))
        cfg = TrainConfigRecord.find(opts.model)
        name, revision = (cfg.base, cfg.base_revision) if cfg else (None, None)
    if not name:
        return None, None, None, False
    pushed_as = None
    if Path(name).is_dir() and (Path(name) / RELEASE).is_file():
        pushed_as = read_record(name, KIND_RELEASE).get("repo_id")
    hub_id = opts.base_repo_id or (name if card_mod.looks_like_hub_id(name) else None) or pushed_as
    return name, hub_id, model_fingerprint(name, revision), True


def make_release_portable(dest: Path, opts: PushOptions, inputs: card_mod.CardInputs) -> card_mod.CardInputs:
    """Rewrite the release's records so that no file names a path of this machine: a local
    base becomes its Hub id (--base-repo-id, or the repo it was pushed to), otherwise "a local
    model" named by its weights fingerprint; other absolute paths become ``<local>/NAME``.
    Writes release.json (the manifest that lets the folder be pushed again with the same card)
    and returns the card inputs rewritten the same way."""
    import dataclasses

    name, hub_id, base_fp, has_base = _release_base(opts)
    if opts.adapter is not None and not opts.merge and not hub_id:
        raise UserError(f"{opts.adapter} is an adapter of a local model ({name}): an adapter release needs its "
                        "base on the Hub. Publish the base first (release push --model BASE_DIR --repo-id ORG/BASE) "
                        "and pass --base-repo-id ORG/BASE, or release the merged model (--merge)")
    replace = {}
    if name and hub_id and name != hub_id:
        replace = {name: hub_id, str(Path(name).resolve()): hub_id}
    for fname in (METRICS, MERGE_CHECK, "adapter_config.json"):
        if (dest / fname).is_file():
            doc = read_json_file(dest / fname)
            write_json(dest / fname, scrub_paths(doc, replace))
    cfg = TrainConfigRecord.find(dest)
    if cfg is not None:
        import yaml

        write_atomic(dest / TRAIN_CONFIG, yaml.safe_dump(scrub_paths(cfg.doc, replace), sort_keys=False))
    local = has_base and not hub_id
    inputs = dataclasses.replace(
        inputs, base_model=hub_id if has_base else inputs.base_model,
        base_fingerprint=base_fp or inputs.base_fingerprint,
        base_local=local or inputs.base_local, lineage=scrub_paths(inputs.lineage, replace),
        license_source=scrub_paths(inputs.license_source, replace), metrics=scrub_paths(inputs.metrics, replace),
        train_config=scrub_paths(inputs.train_config, replace), merge_check=scrub_paths(inputs.merge_check, replace))
    loss = {k: [list(p) for p in v] for k, v in inputs.loss.items()} if inputs.loss else None
    write_record(dest / RELEASE, KIND_RELEASE, {
        "repo_id": opts.repo_id,
        "release": "adapter" if opts.adapter is not None and not opts.merge else (
            "merged" if (dest / MERGE_CHECK).is_file() else "model"),
        "weights_fingerprint": weights_fingerprint(dest),
        "base": {"id": inputs.base_model if not local else None, "fingerprint": inputs.base_fingerprint,
                 "local": inputs.base_local,
                 "relation": "adapter" if opts.adapter is not None and not opts.merge else "finetune"},
        "license": inputs.license, "license_source": inputs.license_source, "lineage": inputs.lineage,
        "loss": loss, "loss_source": inputs.loss_source, "lora_coverage": inputs.lora_coverage})
    return inputs


@dataclass
class PushResult:
    """What ``release push`` did."""

    folder: Path | None
    publish: PublishResult | None = None
    dry_run: bool = False


def push(opts: PushOptions, log: Callable[[str], None] = print) -> PushResult:
    """Assemble the release and publish it (Hub), write it (--to-dir, as its one writer:
    captioning.files.output_lock) or only describe it (--dry-run)."""
    if opts.to_dir is not None and not opts.dry_run:
        with output_lock(opts.to_dir, "--to-dir", replaces=True,
                         inputs={"--adapter": opts.adapter, "--model": opts.model, "--eval": opts.eval_dir,
                                 "--base": opts.base, "--logs": opts.logs, "--template": opts.template}):
            # fail before any merge work when the destination would be refused anyway
            if opts.to_dir.is_dir() and any(opts.to_dir.iterdir()) and not opts.force:
                raise UserError(f"--to-dir {opts.to_dir} is not empty: pass --force to replace it, or choose a new "
                                "folder")
            return _push(opts, log)
    if not opts.dry_run:
        hub.get_api(opts.token)  # offline mode or a missing token fail now, not after the merge
    return _push(opts, log)


def _push(opts: PushOptions, log: Callable[[str], None]) -> PushResult:
    # assembled beside --to-dir (one rename puts it in place; a killed run's partial folder is
    # removed by the next writer), else in the system's temporary folder for an upload
    with partial_folder(opts.to_dir) if opts.to_dir is not None else \
            tempfile.TemporaryDirectory(prefix="release-") as tmp:
        folder = assemble(opts, Path(tmp) / "release", log=log)
        if opts.dry_run:
            where = f"into {opts.to_dir}" if opts.to_dir else (
                f"to {hub.repo_url(opts.repo_id)} (revision {opts.revision or 'main'}"
                f"{', tag ' + opts.tag if opts.tag else ''}{', private' if opts.private else ''})")
            log(f"dry run: would write {where}:")
            for line in describe_folder(folder):
                log(line)
            log("dry run: nothing was written or uploaded")
            return PushResult(folder=None, dry_run=True)
        if opts.to_dir is not None:
            write_to_dir(folder, opts.to_dir, opts.force)
            log(f"release folder: {opts.to_dir}")
            log(f"model card: {opts.to_dir / 'README.md'}")
            return PushResult(folder=opts.to_dir)
        result = publish_folder(folder, opts.repo_id, token=opts.token, private=opts.private,
                                revision=opts.revision, tag=opts.tag, commit_message=opts.commit_message, log=log)
    if result.committed:
        log(f"pushed {len(result.changed)} changed file(s)" + (f", removed {len(result.deleted)}" if result.deleted
                                                              else ""))
    else:
        log("unchanged: the repo already holds this release (no new commit)")
    log(f"repo: {result.url}")
    log(f"commit: {result.commit}" + (f" (tag {result.tag})" if result.tag else ""))
    return PushResult(folder=None, publish=result)
