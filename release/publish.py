"""Put a finished folder (a release, the Space) on the Hub or in a local folder.

The Hub side is ``HfApi.upload_folder``: it hashes the files, asks the Hub which ones it
already holds and skips them, makes no commit when nothing changed, and deletes what the
folder no longer holds (``delete_patterns``; ``.gitattributes`` is kept). An upload that is
interrupted leaves no commit behind, and the same command run again sends only what the
server lacks (LFS/Xet objects it already stores are not sent twice).

What stays here is what upload_folder does not do: creating the repo, branch and Space
settings; telling whether a commit was made and what it changed (the summary line);
tagging; and turning the Hub's refusals and lost connections into one-line errors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from captioning.errors import UserError
from captioning.files import replace_folder
from release import hub

#: the message upload_folder logs when it skips an empty commit; the push says "unchanged" itself
_NO_CHANGE_WARNING = "No files have been modified since last commit"
_UPLOAD_LOGGERS = ("huggingface_hub.hf_api", "huggingface_hub._upload_pipeline")
DEFAULT_MESSAGE = "Release: upload folder"


@dataclass
class PublishResult:
    """Where a folder went: the repo URL, the commit it is at, and whether a commit was made."""

    url: str
    commit: str | None
    committed: bool
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    tag: str | None = None


def local_tree(folder: Path) -> dict[str, Path]:
    """{repo path: file} for everything under ``folder``."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


class _DropNoChangeWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NO_CHANGE_WARNING not in record.getMessage()


@contextlib.contextmanager
def _without_no_change_warning():
    """Keep upload_folder's "skipping to prevent empty commit" warning off the terminal for
    the length of one upload (huggingface_hub logs it to stderr; our own line says so)."""
    drop = _DropNoChangeWarning()
    loggers = [logging.getLogger(name) for name in _UPLOAD_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def _commit_diff(api, repo_id: str, repo_type: str, old: str, new: str) -> tuple[list[str], list[str]]:
    """(changed, deleted) paths between two commits, read from the Hub's listings: upload_folder
    returns only the new commit, and the summary line counts what it changed."""
    from huggingface_hub.hf_api import RepoFile

    def tree(rev: str) -> dict[str, str]:
        return {f.path: f.blob_id for f in api.list_repo_tree(repo_id, repo_type=repo_type, revision=rev,
                                                               recursive=True) if isinstance(f, RepoFile)}

    before, after = tree(old), tree(new)
    return [p for p in after if before.get(p) != after[p]], [p for p in before if p not in after]


def _network_error(e: BaseException | None) -> bool:
    """True when ``e`` or what caused it is a failed connection (huggingface_hub wraps LFS
    upload errors in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        modules = {c.__module__.split(".")[0] for c in type(e).__mro__}
        if isinstance(e, (ConnectionError, TimeoutError)) or modules & {"httpx", "httpx2", "httpcore", "requests",
                                                                         "urllib3"}:
            return True
        e = e.__cause__ or e.__context__
    return False


def publish_folder(folder: Path, repo_id: str, *, repo_type: str = "model", token: str | None = None,
                   private: bool = False, revision: str | None = None, tag: str | None = None,
                   commit_message: str | None = None, space_sdk: str | None = None,
                   space_hardware: str | None = None, space_variables: dict[str, str] | None = None,
                   log: Callable[[str], None] = print) -> PublishResult:
    """Make ``repo_id`` (at ``revision``) hold exactly ``folder``; no commit when it already does."""
    from huggingface_hub.errors import HfHubHTTPError

    api = hub.get_api(token)
    url = hub.repo_url(repo_id, repo_type)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                        **({"space_sdk": space_sdk} if repo_type == "space" else {}))
        if space_hardware:
            api.request_space_hardware(repo_id, space_hardware)
        for key, value in (space_variables or {}).items():
            api.add_space_variable(repo_id, key, value)
        if revision:
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        # the head before the upload tells whether upload_folder committed, and as parent_commit
        # it makes a push that raced another one fail instead of overwriting it
        before = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
        with _without_no_change_warning():
            info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type, revision=revision,
                                     commit_message=commit_message or DEFAULT_MESSAGE, delete_patterns=["*"],
                                     parent_commit=before)
        head, committed = info.oid, info.oid != before
        changed, deleted = _commit_diff(api, repo_id, repo_type, before, head) if committed else ([], [])
        if tag:
            _tag(api, repo_id, repo_type, tag, head)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = {401: "check the token (--token, HF_TOKEN or `hf auth login`)",
                403: "the token cannot write to this namespace",
                409: "someone pushed meanwhile: run the same command again"}.get(status, "run the same command again")
        raise UserError(f"the Hub refused the push to {url} ({first}); {hint}") from e
    except Exception as e:
        if _network_error(e):
            raise UserError(f"push to {url} interrupted ({type(e).__name__}): nothing was committed; run the same "
                            f"command again to finish (files the server already has are not sent twice)") from e
        raise
    return PublishResult(url=url, commit=head, committed=committed, changed=changed, deleted=deleted, tag=tag)


def _tag(api, repo_id: str, repo_type: str, tag: str, commit: str | None) -> None:
    refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    existing = {t.name: t.target_commit for t in refs.tags}
    if tag in existing:
        if existing[tag] != commit:
            raise UserError(f"--tag {tag} already names commit {existing[tag][:10]} of {repo_id}, not this release "
                            f"({(commit or '')[:10]}): choose a new tag")
        return
    api.create_tag(repo_id, tag=tag, revision=commit, repo_type=repo_type)


# ---------------------------------------------------------------- local folder
def write_to_dir(folder: Path, to_dir: Path, force: bool) -> None:
    """Put the assembled folder at ``to_dir`` (replacing a non-empty one only with --force)."""
    if to_dir.exists() and not to_dir.is_dir():
        raise UserError(f"--to-dir {to_dir} is a file: pass a folder")
    if to_dir.is_dir() and any(to_dir.iterdir()) and not force:
        raise UserError(f"--to-dir {to_dir} is not empty: pass --force to replace it, or choose a new folder")
    replace_folder(folder, to_dir)  # assembled beside it (push), so one rename puts it in place


def describe_folder(folder: Path) -> list[str]:
    """One line per file: size and path (what a dry run prints)."""
    lines = []
    total = 0
    for rel, p in local_tree(folder).items():
        size = p.stat().st_size
        total += size
        lines.append(f"  {_human(size):>9}  {rel}")
    lines.append(f"  {_human(total):>9}  total, {len(lines)} files")
    return lines


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
