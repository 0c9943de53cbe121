"""The records: every file that passes between stages is read and written only here.

| file | kind | written by | read by |
|---|---|---|---|
| ``train_config.yaml`` | train config | training/train.py | loading, training (resume, lineage), release, Space |
| ``metrics.json`` of a training run | ``training`` | training/train.py | release (card, push) |
| ``metrics.json`` of an evaluation | ``eval`` | eval/run.py generate / score | compare, reproduce, release, Space |
| ``merge_check.json`` | ``merge_check`` | release merge | release (card, push) |
| ``release.json`` | ``release`` | release push | release (card, push again), Space |

JSON records carry ``kind`` and ``schema`` (:data:`SCHEMA`). Files written before they did
still load: their kind is told from their keys (a training record has ``train``/``history``,
an eval record a ``metrics`` object and neither), and a reader asked for one kind refuses the
other in one line ("DIR/metrics.json is a training record (validation during training), not
an eval record: ..."). train_config.yaml stays the plain resolved config (it is also a
recipe: ``--config runs/x/train_config.yaml`` trains again), read into :class:`TrainConfigRecord`.

Identity is by content, never by path: :func:`weights_fingerprint` hashes the tensors of a
folder's safetensors files (names, dtypes, shapes, bytes), so a folder copied elsewhere, or
made portable for transformers 4.x (config edits only), keeps its fingerprint, and two
folders with other weights never share one.

Every write goes through :func:`write_atomic`: a temporary file in the same folder, fsynced,
renamed over the target (readers never see half a file), with the mode a plain ``open``
would give under the current umask. Published files hold no path of the machine they were
made on: :func:`scrub_paths` rewrites them when a release is assembled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from captioning.errors import UserError

SCHEMA = 1
TRAIN_CONFIG = "train_config.yaml"
METRICS = "metrics.json"
MERGE_CHECK = "merge_check.json"
RELEASE = "release.json"

KIND_TRAINING = "training"
KIND_EVAL = "eval"
KIND_MERGE_CHECK = "merge_check"
KIND_RELEASE = "release"
_KIND_NAMES = {KIND_TRAINING: "a training record (validation during training)",
               KIND_EVAL: "an eval record (eval/run.py generate or score)",
               KIND_MERGE_CHECK: "a merge check (release merge)",
               KIND_RELEASE: "a release manifest (release push)"}
_KIND_SOURCES = {KIND_TRAINING: "the output folder of training/train.py",
                 KIND_EVAL: "the --out folder of eval/run.py generate",
                 KIND_MERGE_CHECK: "a folder written by release merge",
                 KIND_RELEASE: "a release folder (release push --to-dir)"}


# ---------------------------------------------------------------------------- writing
def _umask() -> int:
    """The process umask. Read from /proc where it can be: os.umask() can only be read by
    setting it, and for that moment a file another thread creates would get mode 0666."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that readers never see a half-written file.

    The bytes go to a temporary file in the same folder (same filesystem, so the final
    ``os.replace`` is atomic) and are fsynced first; the file gets the mode ``open`` would
    give it (0666 less the umask: mkstemp's owner-only mode would hide shared results).
    The parent folder is created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``dst`` (same filesystem): an old ``dst`` is
    renamed aside first and removed only once the new one is in place, so ``dst`` is at
    every moment either the old folder or the complete new one."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


def check_writable(folder: str | os.PathLike, flag: str) -> Path:
    """Prove that ``folder`` can be created (or written, if it exists) before the work whose
    results go there starts, leaving nothing behind; a UserError naming ``flag`` otherwise
    (a file in the way, a read-only place, no permission)."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {folder}: {existing} is a file, not a folder; pick another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or e.__class__.__name__
        raise UserError(f"{flag} {folder}: cannot write in {existing} ({reason}); pick a folder you can write "
                        "to") from None
    return folder


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """JSON text as every record is written (UTF-8, not ASCII-escaped, newline at the end)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`write_atomic` of ``obj`` as JSON."""
    return write_atomic(path, dumps_json(obj, indent=indent))


def write_record(path: str | os.PathLike, kind: str, doc: Mapping[str, Any]) -> Path:
    """Write a JSON record of ``kind``: ``kind`` and ``schema`` first, then ``doc``."""
    return write_json(path, {"kind": kind, "schema": SCHEMA,
                             **{k: v for k, v in doc.items() if k not in ("kind", "schema")}})


# ---------------------------------------------------------------------------- reading
#: the largest JSON file read. COCO's largest caption file is well under this: a bigger one
#: is the wrong file, refused before it is read into memory whole.
MAX_JSON_BYTES = 2 * 2**30


def read_json_file(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse a JSON file; every way it can be unreadable (missing, a folder, not UTF-8, not
    JSON, over :data:`MAX_JSON_BYTES`) is a one-line UserError naming it (and ``what`` it
    was given as: a flag, say). A UTF-8 BOM is tolerated (Windows editors write one)."""
    path = Path(path)
    label = f"{what} " if what else ""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # the read below names what is wrong
    if size > MAX_JSON_BYTES:
        raise UserError(f"{label}{path} is {size / 2**30:.1f} GiB: files over {MAX_JSON_BYTES / 2**30:.0f} GiB "
                        "are refused (COCO's largest caption file is ~90 MB); check the file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path} (no such file)" if what else f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{label}{path} is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{label}{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {label}{path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{label}{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
                        "fix it, or regenerate it with the command that wrote it") from None


def adapter_base(folder: str | Path) -> str | None:
    """The base model a LoRA adapter folder names (adapter_config.json's
    ``base_model_name_or_path``), or None when it names none; a one-line UserError when the
    file is missing or unreadable. Every stage reads an adapter's base through this."""
    doc = read_json_file(Path(folder) / "adapter_config.json")
    base = doc.get("base_model_name_or_path") if isinstance(doc, dict) else None
    return base if isinstance(base, str) and base else None


def model_config(folder: str | os.PathLike) -> dict:
    """A saved model folder's config.json as a dict ({} when it has none); unreadable is a
    one-line UserError. The stages that only look at a few of its keys (dtype, model_type,
    auto_map) read it through this; loading a model goes through transformers' AutoConfig."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    doc = read_json_file(path)
    return doc if isinstance(doc, dict) else {}


def kind_of(doc: Any) -> str | None:
    """The kind of a parsed JSON record: its ``kind``, else told from its keys (files
    written before records carried a kind), else None."""
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("kind"), str):
        return doc["kind"]
    if "train" in doc or "history" in doc:
        return KIND_TRAINING
    if isinstance(doc.get("metrics"), dict):
        return KIND_EVAL
    if "passed" in doc and "max_abs_logit_diff" in doc:
        return KIND_MERGE_CHECK
    return None


# ---------------------------------------------------------------------------- portability
#: an absolute path (or ~/...) of two or more components inside a string: not after a word
#: character, a URL's "://", a dot or "<" (so "</s>", "[/INST]", "a/b", "1/2" and URLs are
#: left alone)
_PART = r"[^\s/'\"`,;()\[\]{}<>|]+"
_LOCAL_PATH = re.compile(rf"(?<![\w:/.~<>-])(?:~/{_PART}|/{_PART}/{_PART})(?:/{_PART})*/?")
LOCAL = "<local>"


def scrub_paths(value: Any, replace: Mapping[str, str] | None = None) -> Any:
    """A copy of ``value`` (JSON-like) fit to publish: strings equal to a key of ``replace``
    become its value (a local base folder -> its Hub id), and every other absolute local
    path inside a string becomes ``<local>/NAME`` (its last component): a published file
    never tells where it was made."""
    replace = dict(replace or {})
    if isinstance(value, dict):
        return {k: scrub_paths(v, replace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_paths(v, replace) for v in value]
    if not isinstance(value, str):
        return value
    if value in replace:
        return replace[value]
    for old, new in replace.items():
        value = value.replace(old, new)
    return _LOCAL_PATH.sub(lambda m: f"{LOCAL}/{Path(m.group(0).rstrip('/')).name}", value)


def local_paths_in(text: str) -> list[str]:
    """The absolute local paths a text still holds (what :func:`scrub_paths` would replace)."""
    return _LOCAL_PATH.findall(text)


def _resolve(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def read_record(path: str | os.PathLike, kind: str, *, what: str | None = None) -> dict[str, Any]:
    """The JSON record of ``kind`` at ``path`` (a file, or a folder holding the kind's
    usual file name) as a dict; a UserError naming the file otherwise."""
    default = {KIND_MERGE_CHECK: MERGE_CHECK, KIND_RELEASE: RELEASE}.get(kind, METRICS)
    path = _resolve(path, default)
    return _checked(path, read_json_file(path, what), kind)


def _checked(path: Path, doc: Any, kind: str) -> dict[str, Any]:
    got = kind_of(doc)
    if got != kind:
        found = _KIND_NAMES.get(got, "not a record this toolkit writes")
        raise UserError(f"{path} is {found}, not {_KIND_NAMES[kind].split(' (')[0]}: pass "
                        f"{_KIND_SOURCES[kind]}")
    schema = doc.get("schema", SCHEMA)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise UserError(f"{path}: record schema {schema!r} is newer than this toolkit reads ({SCHEMA}); "
                        "upgrade the toolkit")
    if kind in (KIND_EVAL, KIND_TRAINING) and not isinstance(doc.get("metrics"), dict):
        raise UserError(f"{path}: no 'metrics' object; regenerate it with {_KIND_SOURCES[kind].split(' of ')[-1]}")
    return doc


# ---------------------------------------------------------------------------- typed views
@dataclass
class _JsonRecord:
    """A JSON record read through :func:`read_record`: its file and its parsed document."""

    KIND: ClassVar[str] = ""
    path: Path
    doc: dict[str, Any]

    @classmethod
    def read(cls, path: str | os.PathLike, *, what: str | None = None):
        path = _resolve(path, METRICS)
        return cls(path=path, doc=read_record(path, cls.KIND, what=what))

    @classmethod
    def find(cls, folder: str | os.PathLike):
        """The record of this kind in ``folder``'s metrics.json, or None when there is no
        metrics.json or it is of another kind (a training output's, seen by eval, say).
        The file is read once."""
        path = Path(folder) / METRICS
        if not path.is_file():
            return None
        doc = read_json_file(path)
        return cls(path=path, doc=_checked(path, doc, cls.KIND)) if kind_of(doc) == cls.KIND else None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.doc["metrics"]

    @property
    def model(self) -> dict[str, Any]:
        return _section(self.doc, "model")


@dataclass
class EvalRecord(_JsonRecord):
    """An eval record (metrics.json of eval/run.py generate or score)."""

    KIND: ClassVar[str] = KIND_EVAL

    @property
    def n_images(self) -> int | None:
        return self.doc.get("n_images")

    @property
    def dataset(self) -> dict[str, Any]:
        return _section(self.doc, "dataset")

    @property
    def generation(self) -> dict[str, Any]:
        return _section(self.doc, "generation")

    @property
    def prompt(self) -> str | None:
        return self.doc.get("prompt")

    @property
    def weights(self) -> dict[str, str | None]:
        """Fingerprints of what was evaluated: ``model`` (the weights loaded, a base when
        an adapter was applied), ``adapter`` (None without one)."""
        m = self.model
        return {"model": m.get("weights_fingerprint"), "adapter": m.get("adapter_fingerprint")}

    @property
    def tokenized(self) -> bool:
        scoring = _section(self.doc, "scoring")
        return bool(scoring.get("tokenize", self.doc.get("tokenized", True)))

    def identity(self) -> dict[str, Any]:
        """What must agree for two numbers to stand side by side: the references (the
        dataset hash covers the image ids and every reference caption), the split, a caption
        transform applied to the references, the number of images (CIDEr-D's idf comes from
        the evaluated set) and the tokenization. (The scale is one by contract: every value
        on the 0-1 scale pycocoevalcap returns.)"""
        d = self.dataset
        return {"references": d.get("hash"), "split": d.get("split"),
                "caption transform": d.get("caption_transform") or "none", "n_images": self.n_images,
                "tokenized": self.tokenized}


def not_comparable(a: EvalRecord, b: EvalRecord) -> list[str]:
    """Why the numbers of ``b`` cannot stand beside those of ``a`` (empty: they can)."""
    why = []
    for key, va in a.identity().items():
        vb = b.identity()[key]
        if va != vb:
            if key == "references":
                why.append("other references" + ("" if va and vb else " (hash not recorded)"))
            elif key == "tokenized":
                why.append("tokenized" if vb else "not tokenized")
            else:
                why.append(f"{key} {vb} vs {va}")
    return why


@dataclass
class TrainingRecord(_JsonRecord):
    """The metrics.json of a training output (validation history, final metrics, timing)."""

    KIND: ClassVar[str] = KIND_TRAINING

    @property
    def history(self) -> list[dict[str, Any]]:
        h = self.doc.get("history")
        return h if isinstance(h, list) else []

    @property
    def train(self) -> dict[str, Any]:
        return _section(self.doc, "train")


def _section(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    v = doc.get(name)
    return v if isinstance(v, dict) else {}


#: optim keys of train_config.yaml files written before the optim section took TrainingArguments'
#: names; every reader of a saved config or recipe sees the current names (upgrade_train_config).
OLD_OPTIM_KEYS = {"lr": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
                  "grad_accum": "gradient_accumulation_steps", "optimizer": "optim", "scheduler": "lr_scheduler_type",
                  "warmup_ratio": "warmup_steps", "label_smoothing": "label_smoothing_factor",
                  "gradient_checkpointing": "activation_checkpointing"}


def upgrade_train_config(doc: Any) -> Any:
    """A recipe or saved config (a dict) with the optim keys of earlier versions renamed
    (see OLD_OPTIM_KEYS); anything else is returned as it is."""
    if not isinstance(doc, dict) or not isinstance(doc.get("optim"), dict):
        return doc
    optim = dict(doc["optim"])
    if not optim.get("warmup_ratio"):  # both were saved; TrainingArguments takes a ratio as warmup_steps < 1
        optim.pop("warmup_ratio", None)
    elif not optim.get("warmup_steps"):
        optim.pop("warmup_steps", None)
    if "max_steps" in optim and optim["max_steps"] is None:  # was null, TrainingArguments' "unset" is -1
        optim["max_steps"] = -1
    return {**doc, "optim": {OLD_OPTIM_KEYS.get(k, k): v for k, v in optim.items()}}


@dataclass
class TrainConfigRecord:
    """train_config.yaml: the fully resolved training config that travels with a model.

    Sections are plain dicts (the training package owns the typed config and its
    defaults); later stages read the few fields they need through the properties here,
    so a renamed key breaks in one place.
    """

    path: Path
    doc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainConfigRecord:
        import yaml

        path = _resolve(path, TRAIN_CONFIG)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file; pass a folder written by training/train.py") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path} ({e.__class__.__name__})") from None
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({e.__class__.__name__}); re-run training or fix the file") \
                from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict) or not all(isinstance(v, dict) or v is None or k == "name"
                                                for k, v in doc.items()):
            raise UserError(f"{path}: expected the sections of a training config (model, data, optim, ...)")
        return cls(path=path, doc=upgrade_train_config(doc))

    @classmethod
    def find(cls, folder: str | os.PathLike | None) -> TrainConfigRecord | None:
        """The train_config.yaml in ``folder``, or None when there is none."""
        if folder is None or not (Path(folder) / TRAIN_CONFIG).is_file():
            return None
        return cls.read(Path(folder) / TRAIN_CONFIG)

    def section(self, name: str) -> dict[str, Any]:
        return _section(self.doc, name)

    @property
    def base(self) -> str | None:
        """The base model id or folder (None for random factory weights)."""
        return self.section("model").get("name_or_path") or None

    @property
    def base_revision(self) -> str | None:
        return self.section("model").get("revision")

    @property
    def factory(self) -> dict[str, Any] | None:
        f = self.section("model").get("factory")
        return f if isinstance(f, dict) else None

    @property
    def family(self) -> str | None:
        fam = self.section("model").get("family")
        return None if fam in (None, "auto") else fam

    @property
    def trust_remote_code(self) -> bool:
        return bool(self.section("model").get("trust_remote_code"))

    @property
    def prompt(self) -> str | None:
        return self.section("data").get("prompt")

    @property
    def has_prompt(self) -> bool:
        return "prompt" in self.section("data")

    @property
    def caption_transform(self) -> str | None:
        return self.section("data").get("caption_transform")


# ---------------------------------------------------------------------------- identity
def weights_fingerprint(folder: str | os.PathLike) -> str | None:
    """sha256 over the tensors in ``folder``'s safetensors files: each tensor's name, dtype,
    shape and bytes, in name order (so shard layout and header metadata do not matter).
    None when the folder holds no safetensors file.

    Read straight from the files (8-byte header length, JSON header, data): no library
    hashes tensor contents independently of the file layout, and loading them into torch
    would double the memory of a large checkpoint.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    # a push hashes the base, the adapter and the release more than once (identity check,
    # merge check, manifest): the same files, unchanged, are hashed once per process
    stats = [f.stat() for f in files]
    key = tuple((str(f.resolve()), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for f, s in zip(files, stats))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _hash_tensors(files)
    return _FINGERPRINTS[key]


_FINGERPRINTS: dict[tuple, str] = {}


def _hash_tensors(files: list[Path]) -> str:
    entries = []
    for f in files:
        try:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > min(f.stat().st_size - 8, 100_000_000):  # safetensors caps its header at 100 MB
                    raise ValueError("header length past the end of the file")
                header = json.loads(fh.read(n))
                if not isinstance(header, dict):
                    raise ValueError("header is not a JSON object")
            for name, info in header.items():
                if name != "__metadata__":
                    (begin, end), dtype, shape = info["data_offsets"], info["dtype"], info["shape"]
                    entries.append((name, dtype, shape, f, 8 + n + begin, end - begin))
        except (OSError, struct.error, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{f}: not a readable safetensors file ({e.__class__.__name__}); "
                            "re-save the model with save_pretrained()") from None
    total = hashlib.sha256()
    for name, dtype, shape, f, start, size in sorted(entries, key=lambda e: e[0]):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            fh.seek(start)
            left = size
            while left:
                block = fh.read(min(left, 1 << 22))
                if not block:
                    raise UserError(f"{f}: truncated safetensors file; re-save the model")
                h.update(block)
                left -= len(block)
        total.update(f"{name}\0{dtype}\0{shape}\0{h.hexdigest()}\n".encode())
    return total.hexdigest()


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits, as fingerprints are shown in messages and cards."""
    return fingerprint[:12] if fingerprint else "unknown"


def model_fingerprint(source: str | os.PathLike | None, revision: str | None = None) -> str | None:
    """:func:`weights_fingerprint` of a model folder, or of a Hub model's files in the local
    cache (what was loaded); None when neither is on this machine."""
    if source is None:
        return None
    if Path(source).is_dir():
        return weights_fingerprint(source)
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(source), revision=revision, local_files_only=True,
                                   allow_patterns=["*.safetensors", "*.json"])
    except Exception:
        return None
    return weights_fingerprint(folder)
