"""What metrics.json records so that anyone can re-run a number: versions, model identity,
time stamps, the command line. Pure helpers, no CLI.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Top-level files of a model folder that decide its outputs. Cards, metrics, predictions,
#: logs and checkpoints do not, and metrics.json must not change the hash it records.
_MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".jinja", ".txt", ".model", ".pt")
_NOT_MODEL = {"metrics.json", "predictions.json", "predictions.partial.jsonl", "trainer_state.json",
              "training_args.json"}

_LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "pycocoevalcap",
              "sacrebleu", "huggingface_hub", "pillow")


def utc_now() -> str:
    """Current UTC time, ISO 8601 to the second (``2026-11-23T07:38:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def command_line(argv: Sequence[str] | None, prog: str = "python eval/run.py") -> str:
    """The command as a user would type it again (arguments shell-quoted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([prog, shlex.join(args)]) if args else prog


def java_version() -> str | None:
    """First line of ``java -version`` (None when Java is missing or unusable).

    The scorer's cached probe: one ``java -version`` per process, whoever asks first.
    """
    from captioning.errors import UserError
    from eval.scoring import _java

    try:
        return _java()[2]
    except UserError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of python, the libraries a number depends on, and Java."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["java"] = java_version()
    return versions


def eval_record(result: dict, described: dict, scoring: dict, *, command: str | None,
                t_start: float | None = None, **tail: Any) -> dict:
    """The eval record (metrics.json) that ``eval/run.py score`` and ``generate`` write, in
    its field order: the scores of ``result`` (eval.scoring's), ``described`` (what was
    scored: dataset, model, decoding ...), ``scoring`` (its settings), the versions, command
    and time, then ``tail``. ``seconds`` counts from ``t_start`` (None: the caller sets it)."""
    return {
        "metrics": result["metrics"], "unavailable": result.get("unavailable", {}),
        "extras": result.get("extras", {}), "n_images": result["n_images"],
        "empty_captions": result["empty_captions"],
        **described,
        "scoring": scoring,
        "versions": library_versions(), "command": command, "created": utc_now(),
        "seconds": None if t_start is None else round(time.perf_counter() - t_start, 3),
        **tail,
    }


def folder_content_hash(folder: str | Path) -> str | None:
    """sha256 over the top-level model files of ``folder`` (config, weights, tokenizer and
    processor files), by name and content. None when ``folder`` is not a folder.

    Two folders with the same hash load into the same model; metrics.json, README.md,
    train_config.yaml, logs/ and checkpoints/ are left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    total = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name in _NOT_MODEL or not path.name.endswith(_MODEL_SUFFIXES):
            continue
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        total.update(f"{path.name}\0{h.hexdigest()}\n".encode())
    return total.hexdigest()


def hub_commit(repo_id: str, revision: str | None) -> tuple[str | None, str | None]:
    """(the commit sha of a hub model, None) when found: asked from the Hub when reachable,
    else read from the local cache's snapshot folder (offline runs of cached models still
    record it); (None, why not) when the look-up failed, so the record says so instead of
    looking like a model that has no revision."""
    from captioning.loading import resolve_revision

    sha = resolve_revision(repo_id, revision)
    if sha:
        return sha, None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception as e:
        return None, f"not asked of the Hub, and the cache could not be read ({type(e).__name__})"
    if isinstance(cached, str) and "/snapshots/" in cached.replace("\\", "/"):
        return Path(cached).parent.name, None
    return None, "the Hub could not be asked (offline or unreachable) and the cache holds no snapshot of it"


def describe_model(captioner: Any) -> dict[str, Any]:
    """The ``model`` block of metrics.json: id or path, requested and resolved revision,
    adapter, family, content hashes of local folders, and the fingerprints of the weights
    evaluated (captioning.records: what a release checks an eval record against)."""
    from captioning.fingerprints import model_fingerprint, weights_fingerprint
    from captioning.loading import looks_local

    source = str(captioner.source)
    local = looks_local(source) and Path(source).is_dir()
    adapter = captioner.adapter
    resolved, unresolved = (None, None) if local or looks_local(source) else hub_commit(source, captioner.revision)
    return {
        "id": source,
        "path": str(Path(source).resolve()) if local else None,
        "revision": captioner.revision,
        "resolved_revision": resolved,
        "content_hash": folder_content_hash(source) if local else None,
        "adapter": str(Path(adapter).resolve()) if adapter else None,
        "adapter_hash": folder_content_hash(adapter) if adapter else None,
        "weights_fingerprint": model_fingerprint(source, captioner.revision),
        "adapter_fingerprint": weights_fingerprint(adapter) if adapter else None,
        "family": captioner.family.name,
        **({"resolved_revision_unknown": unresolved} if unresolved else {}),
    }
