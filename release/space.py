"""Deploy space/ as a Gradio Space that serves released models.

    release space --repo-id me/captioner-demo --models me/smolvlm-style,HuggingFaceTB/SmolVLM-256M-Instruct
    release space --repo-id demo/space --models demo_out/release --to-dir demo_out/space   # offline

The Space folder holds space/'s app and assets, the ``captioning`` package the
app imports (copied next to app.py), a models.yaml listing the models, and a
README rendered from model_cards/space_readme.md.j2 whose front matter (written with
huggingface_hub's SpaceCardData) is what the Hub reads: the exact gradio
``sdk_version`` and ``python_version`` of this environment, ``models:`` (the Space
then shows on each model's page), ``preload_from_hub`` (weights fetched at build,
not at the first visit), ``suggested_hardware``, ``short_description`` and ``tags``.
Only Hub ids go into ``models:`` and ``preload_from_hub``: local folders (``--to-dir``)
are served but not listed there, and the README says so. On the Hub the model list is
also set as the ``CAPTION_MODELS`` Space variable, which the app reads first.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from captioning.errors import UserError
from captioning.files import output_lock, partial_folder
from captioning.options import option
from release import hub
from release.card import TEMPLATES_DIR, looks_like_hub_id
from release.publish import PublishResult, describe_folder, publish_folder, write_to_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = REPO_ROOT / "space"
SPACE_TEMPLATE = TEMPLATES_DIR / "space_readme.md.j2"
ENV_MODELS = "CAPTION_MODELS"  # the variable space/app.py reads
DEFAULT_HARDWARE = "cpu-basic"
#: tags when neither --tags nor space/README.md name any
DEFAULT_TAGS = ("image-captioning", "image-to-text", "vision-language-model")
SHORT_DESCRIPTION_MAX = 60  # the Hub refuses a Space config with a longer one
PRELOAD_MAX = 10  # the Hub refuses a Space config that preloads more repos ("preload models limited to 10")
#: files of space/ that the deployed Space does not take as they are
_SKIP = {"README.md", "models.yaml", "__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyi")


@dataclass
class SpaceOptions:
    """What ``release space`` does; its flags are these fields (captioning.options.click_options)."""

    repo_id: str = option(help="NAMESPACE/NAME of the Space")
    models: list[str] = option(help="comma-separated hub ids (or folders with --to-dir) to serve")
    to_dir: Path | None = option(None, help="write the Space folder here instead of the Hub")
    hardware: str | None = option(None, help="Space hardware (e.g. cpu-basic, t4-small, zero-a10g): requested on the "
                                  "Hub and written as the README's suggested_hardware (default there: cpu-basic)")
    private: bool = option(False, help="create the Space private")
    dry_run: bool = option(False, help="print what would be uploaded where; write nothing")
    force: bool = option(False, help="replace a non-empty --to-dir")
    token: str | None = option(None, help="Hub token (default: HF_TOKEN, then `hf auth login`)")
    space_dir: Path = field(default_factory=lambda: SPACE_DIR)
    title: str | None = option(None, help="Space title (default: space/README.md's)")
    short_description: str | None = option(None, help="one line on the Space's thumbnail, at most 60 characters "
                                           "(default: space/README.md's)")
    tags: list[str] | None = option(None, help="comma-separated Space tags (default: space/README.md's, else "
                                    + ", ".join(DEFAULT_TAGS) + '; "" for none)')
    python_version: str | None = option(None, help="Python the Space runs, 3.x or 3.x.x (default: this "
                                        "interpreter's major.minor)")

    def __post_init__(self):
        hub.check_repo_id(self.repo_id)
        self.models = [m.strip() for m in self.models if m.strip()]
        if not self.models:
            raise UserError("--models is empty: pass hub ids or release folders, comma-separated")
        self.space_dir = Path(self.space_dir)
        if self.to_dir is not None:
            self.to_dir = Path(self.to_dir)
            if self.private:
                raise UserError("--to-dir writes a local folder: --private only applies to the Hub")
        if self.hardware is not None:
            self.hardware = check_hardware(self.hardware)
        if self.short_description is not None:
            self.short_description = check_short_description(self.short_description)
        if self.tags is not None:
            self.tags = list(dict.fromkeys(t.strip() for t in self.tags if t.strip()))
        if self.python_version is not None:
            self.python_version = self.python_version.strip()
            if not re.fullmatch(r"3\.\d+(\.\d+)?", self.python_version):
                raise UserError(f"--python-version {self.python_version!r}: expected 3.x or 3.x.x (e.g. 3.11)")
        if not (self.space_dir / "app.py").is_file():
            raise UserError(f"{self.space_dir}/app.py not found: the Space app is missing from this checkout")
        for m in self.models:
            model_id = _model_id(m)
            if Path(model_id).is_dir():
                if self.to_dir is None:
                    raise UserError(f"--models {model_id} is a local folder: a Space on the Hub loads hub ids; push "
                                    "it with `release push` first (or use --to-dir for a local Space)")
            elif not looks_like_hub_id(model_id):
                raise UserError(f"--models {model_id}: neither a folder nor a hub id like org/name")
        check_each_once(self.models)


def check_hardware(flavor: str) -> str:
    """``flavor`` if the Hub knows it as Space hardware, else a UserError listing those it does."""
    from huggingface_hub import SpaceHardware

    known = [h.value for h in SpaceHardware]
    flavor = flavor.strip()
    if flavor not in known:
        raise UserError(f"--hardware {flavor!r} is not a Space hardware flavor: use one of {', '.join(known)}")
    return flavor


def check_short_description(text: str, where: str = "--short-description", fix: str = "shorten it") -> str:
    """``text`` on one line, or a UserError naming ``where`` when the Hub would refuse it."""
    text = " ".join(str(text).split())
    if len(text) > SHORT_DESCRIPTION_MAX:
        raise UserError(f"{where} is {len(text)} characters: the Hub allows at most {SHORT_DESCRIPTION_MAX}; {fix}")
    return text


def check_each_once(models: list[str]) -> None:
    """A UserError naming the first model ``models`` lists twice: the app refuses to start on
    such a list (space/caption_space/models.py ``dedupe``, the same rule), so a Space written
    with it would never come up. Twice means one hub id (in any case, as the Hub reads it) or
    one folder (however it is spelled) at one revision, whatever the names given."""
    seen: dict[tuple[str, str | None], str] = {}
    for m in models:
        model_id = _model_id(m)
        same = (str(Path(model_id).expanduser().resolve()) if Path(model_id).is_dir() else model_id.lower(),
                _revision(m))
        if same in seen:
            also = "" if seen[same] == model_id else f" (also as {seen[same]!r})"
            raise UserError(f"--models names {model_id!r} twice{also}: list each model once (another revision of "
                            "it needs ;revision=...)")
        seen[same] = model_id


def _model_id(entry: str) -> str:
    """The id or folder of a ``CAPTION_MODELS`` entry (options after ``;`` dropped)."""
    return entry.split(";", 1)[0].strip()


def _entries(models: list[str], local: bool) -> list[str]:
    """Model entries as the deployed app reads them: local folders made absolute."""
    out = []
    for m in models:
        head, sep, opts = m.partition(";")
        if local and Path(head.strip()).is_dir():
            head = str(Path(head.strip()).resolve())
        out.append(head.strip() + (sep + opts if sep else ""))
    return out


def _front_matter(readme: Path) -> tuple[dict, str]:
    """(front matter, body) of space/README.md, if there is one."""
    if not readme.is_file():
        return {}, ""
    from huggingface_hub import RepoCard

    card = RepoCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True)
    return card.data.to_dict(), card.text.strip()


def _revision(entry: str) -> str | None:
    """The ``revision=`` option of a ``CAPTION_MODELS`` entry, if any."""
    for opt in entry.split(";")[1:]:
        key, _, value = opt.partition("=")
        if key.strip() == "revision" and value.strip():
            return value.strip()
    return None


def _served(entries: list[str]) -> list[dict]:
    """What the README says of each model: id, options, whether it is a Hub id and preloaded."""
    rows, preloaded = [], set()
    for e in entries:
        model_id, opts = _model_id(e), e.partition(";")[2].strip()
        on_hub = looks_like_hub_id(model_id)
        # preload_from_hub pins a revision only together with a file list, which needs the Hub
        # to know; a pinned model loads its revision at startup instead of a wrong preloaded one
        if not on_hub:
            not_preloaded = None
        elif _revision(e):
            not_preloaded = "pinned to a revision"
        elif model_id not in preloaded and len(preloaded) >= PRELOAD_MAX:
            not_preloaded = f"the Hub preloads at most {PRELOAD_MAX} repos"
        else:
            not_preloaded = None
            preloaded.add(model_id)
        rows.append({"id": model_id, "options": opts, "hub": on_hub, "preload": on_hub and not not_preloaded,
                     "not_preloaded": not_preloaded})
    return rows


def _front_matter_yaml(readme: Path) -> str:
    """The YAML front matter of a rendered README, as written."""
    from huggingface_hub import RepoCard

    return RepoCard(readme.read_text(encoding="utf-8")).data.to_yaml()


def render_space_readme(opts: SpaceOptions, entries: list[str]) -> str:
    """The Space README: the front matter the Hub reads (see the module docstring) + the app's description."""
    from importlib.metadata import PackageNotFoundError, version

    from huggingface_hub import RepoCard, SpaceCardData

    try:  # the Space runs the gradio this app is tested with (read without importing gradio: ~10 s)
        gradio_version = version("gradio")
    except PackageNotFoundError as e:
        raise UserError("gradio is not installed: install requirements.txt (its version goes into the Space "
                        "README)") from e

    meta, body = _front_matter(opts.space_dir / "README.md")
    short = opts.short_description
    if short is None and meta.get("short_description"):
        short = check_short_description(meta["short_description"], f"{opts.space_dir / 'README.md'}'s "
                                        "short_description", "pass a shorter one with --short-description")
    tags = opts.tags if opts.tags is not None else list(meta.get("tags") or DEFAULT_TAGS)
    served = _served(entries)
    hub_models = list(dict.fromkeys(r["id"] for r in served if r["hub"]))
    preload = list(dict.fromkeys(r["id"] for r in served if r["preload"]))
    data = SpaceCardData(
        title=opts.title or meta.get("title") or opts.repo_id.split("/")[-1],
        sdk="gradio", sdk_version=gradio_version, app_file="app.py",
        python_version=opts.python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
        license=meta.get("license", "apache-2.0"), models=hub_models or None, tags=tags or None,
        emoji=meta.get("emoji", "🖼️"), colorFrom=meta.get("colorFrom", "indigo"),
        colorTo=meta.get("colorTo", "green"), pinned=False, short_description=short or None,
        suggested_hardware=opts.hardware or DEFAULT_HARDWARE, preload_from_hub=preload or None)
    card = RepoCard.from_template(data, template_path=str(SPACE_TEMPLATE), repo_id=opts.repo_id,
                                  served=served, body=body)
    return re.sub(r"\n{3,}", "\n\n", card.content).rstrip() + "\n"


def assemble_space(opts: SpaceOptions, dest: Path) -> Path:
    """Build the Space folder in ``dest``."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(opts.space_dir.iterdir()):
        if src.name in _SKIP or src.name.startswith(".") or src.name.endswith(_SKIP_SUFFIXES):
            continue
        if src.is_dir():
            shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            shutil.copy2(src, dest / src.name)
    if not (dest / "requirements.txt").is_file():
        (dest / "requirements.txt").write_text((REPO_ROOT / "requirements.txt").read_text())
    # the app imports the core package; a Space has only its own files, so ship it beside app.py
    shutil.copytree(REPO_ROOT / "captioning", dest / "captioning",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    entries = _entries(opts.models, local=opts.to_dir is not None)
    (dest / "models.yaml").write_text(
        "# Written by `release space`; CAPTION_MODELS (a Space variable) takes precedence.\n"
        + yaml.safe_dump({"models": entries}, sort_keys=False, allow_unicode=True))
    (dest / "README.md").write_text(render_space_readme(opts, entries), encoding="utf-8")
    return dest


def deploy_space(opts: SpaceOptions, log: Callable[[str], None] = print) -> PublishResult | Path | None:
    """Assemble the Space and push it (Hub), write it (--to-dir) or describe it (--dry-run)."""
    if opts.to_dir is not None and not opts.dry_run:
        with output_lock(opts.to_dir, "--to-dir", replaces=True,  # its one writer
                         inputs={f"--models entry {i + 1}": m.partition(";")[0].strip()
                                 for i, m in enumerate(opts.models)}):
            return _deploy_space(opts, log)
    if not opts.dry_run:
        hub.get_api(opts.token)
    return _deploy_space(opts, log)


def _deploy_space(opts: SpaceOptions, log: Callable[[str], None]) -> PublishResult | Path | None:
    # assembled beside --to-dir (one rename puts it in place; a killed run's partial folder is
    # removed by the next writer), else in the system's temporary folder for an upload
    with partial_folder(opts.to_dir) if opts.to_dir is not None else \
            tempfile.TemporaryDirectory(prefix="space-") as tmp:
        folder = assemble_space(opts, Path(tmp) / "space")
        local = [_model_id(m) for m in opts.models if not looks_like_hub_id(_model_id(m))]
        if local:
            log(f"left out of the README's models: and preload_from_hub (no Hub page): {', '.join(local)}")
        if opts.dry_run:
            where = str(opts.to_dir) if opts.to_dir else hub.repo_url(opts.repo_id, "space")
            log(f"dry run: would write the Space to {where}, serving {', '.join(opts.models)}:")
            for line in describe_folder(folder):
                log(line)
            log("README.md front matter:")
            for line in _front_matter_yaml(folder / "README.md").splitlines():
                log(f"  {line}")
            log("dry run: nothing was written or uploaded")
            return None
        if opts.to_dir is not None:
            write_to_dir(folder, opts.to_dir, opts.force)
            log(f"Space folder: {opts.to_dir} (run: python {opts.to_dir / 'app.py'})")
            return opts.to_dir
        entries = _entries(opts.models, local=False)
        result = publish_folder(folder, opts.repo_id, repo_type="space", token=opts.token, private=opts.private,
                                space_sdk="gradio", space_hardware=opts.hardware,
                                space_variables={ENV_MODELS: ",".join(entries)}, log=log)
    log("unchanged: the Space already holds this app (no new commit)" if not result.committed
        else f"pushed {len(result.changed)} changed file(s)")
    log(f"Space: {result.url}")
    log(f"commit: {result.commit}")
    return result
