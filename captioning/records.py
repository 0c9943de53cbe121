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

Records identify models by content (:mod:`captioning.fingerprints`) and are written and
read through :mod:`captioning.files` (atomic writes, one-line JSON errors). Published files
hold no path of the machine they were made on: :func:`captioning.portability.scrub_paths` rewrites them when a
release is assembled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from captioning.errors import UserError
from captioning.files import read_json_file, read_text_file, write_json
from captioning.safe_yaml import parse_yaml, read_yaml_file

SCHEMA = 1
TRAIN_CONFIG = "train_config.yaml"
METRICS = "metrics.json"
MERGE_CHECK = "merge_check.json"
RELEASE = "release.json"

KIND_TRAINING = "training"
KIND_EVAL = "eval"
KIND_MERGE_CHECK = "merge_check"
KIND_RELEASE = "release"
KIND_FACTORY = "factory"
#: beside the weights of a random model captioning.factory saved (family, size, seed): it says
#: the weights are untrained; training outputs and releases do not carry it
FACTORY = "factory.json"
_KIND_NAMES = {KIND_FACTORY: "a random-model record (synthetic.factory)",
               KIND_TRAINING: "a training record (validation during training)",
               KIND_EVAL: "an eval record (eval/run.py generate or score)",
               KIND_MERGE_CHECK: "a merge check (release merge)",
               KIND_RELEASE: "a release manifest (release push)"}
_KIND_SOURCES = {KIND_FACTORY: "a folder written by python -m captioning.factory --out",
                 KIND_TRAINING: "the output folder of training/train.py",
                 KIND_EVAL: "the --out folder of eval/run.py generate",
                 KIND_MERGE_CHECK: "a folder written by release merge",
                 KIND_RELEASE: "a release folder (release push --to-dir)"}


def write_record(path: str | os.PathLike, kind: str, doc: Mapping[str, Any]) -> Path:
    """Write a JSON record of ``kind``: ``kind`` and ``schema`` first, then ``doc``."""
    return write_json(path, {"kind": kind, "schema": SCHEMA,
                             **{k: v for k, v in doc.items() if k not in ("kind", "schema")}})


# ---------------------------------------------------------------------------- reading
def adapter_base(folder: str | Path) -> str | None:
    """The base model a LoRA adapter folder names (adapter_config.json's
    ``base_model_name_or_path``), or None when it names none; a one-line UserError when the
    file is missing or unreadable. Every stage reads an adapter's base through this."""
    path = Path(folder) / "adapter_config.json"
    doc = read_json_file(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path} is a JSON {type(doc).__name__}, not an adapter config (an object with peft_type, "
                        "base_model_name_or_path, ...); pass the folder written by training/train.py")
    if not isinstance(doc.get("peft_type"), str):
        raise UserError(f"{path} names no peft_type: not an adapter config peft wrote; pass the folder written by "
                        "training/train.py")
    base = doc.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


def model_config(folder: str | os.PathLike) -> dict:
    """A saved model folder's config.json as a dict ({} when it has none); unreadable is a
    one-line UserError. The stages that only look at a few of its keys (dtype, model_type,
    auto_map) read it through this; loading a model goes through transformers' AutoConfig."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    doc = read_json_file(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path} is a JSON {type(doc).__name__}, not a model config: the folder is damaged; save or "
                        "download it again")
    return doc


def card_front_matter(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML front matter of a model card (README.md) as a dict ({} when it has none).

    Read here rather than with huggingface_hub's ModelCard.load, whose yaml.safe_load takes an
    alias bomb or a duplicate key from a card someone else wrote: the text goes through
    captioning.files (size, FIFO, link loops, BOM) and the YAML through parse_yaml. The block
    is found with huggingface_hub's own pattern, so both read the same lines."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    path = Path(path)
    match = REGEX_YAML_BLOCK.search(read_text_file(path, max_bytes=MAX_CARD_BYTES))
    doc = parse_yaml(match.group(2), f"{path} front matter") if match else None
    if doc is not None and not isinstance(doc, dict):
        raise UserError(f"{path}: its front matter is not a mapping of keys (license:, base_model:, ...)")
    return doc or {}


#: a model card is text and a few images' worth of markup; the Hub warns well below this
MAX_CARD_BYTES = 10 * 2**20


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


def record_path(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def read_record(path: str | os.PathLike, kind: str, *, what: str | None = None) -> dict[str, Any]:
    """The JSON record of ``kind`` at ``path`` (a file, or a folder holding the kind's
    usual file name) as a dict; a UserError naming the file otherwise."""
    default = {KIND_MERGE_CHECK: MERGE_CHECK, KIND_RELEASE: RELEASE}.get(kind, METRICS)
    path = record_path(path, default)
    return checked_record(path, read_json_file(path, what), kind)


def checked_record(path: Path, doc: Any, kind: str) -> dict[str, Any]:
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
    if kind == KIND_RELEASE:
        base = doc.get("base")
        texts = {k: doc.get(k) for k in ("license", "license_source", "loss_source")}
        for key in ("id", "fingerprint"):
            texts[f"base.{key}"] = base.get(key) if isinstance(base, dict) else None
        for key, value in texts.items():  # what the card shows: text, or not recorded
            if value is not None and not isinstance(value, str):
                raise UserError(f"{path}: {key} is {_shown(value)}, not text; write it again with release push")
        if base is not None and not isinstance(base, dict):
            raise UserError(f"{path}: base is {_shown(base)}, not an object; write it again with release push")
    if kind in (KIND_EVAL, KIND_TRAINING):
        for key, value in doc["metrics"].items():
            # a number, or null for a metric that could not be computed (SPICE offline)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UserError(f"{path}: metrics.{key} is {_shown(value)}, not a number; regenerate it with "
                                f"{_KIND_SOURCES[kind].split(' of ')[-1]}")
        n = doc.get("n_images")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise UserError(f"{path}: n_images is {_shown(n)}, not a count of images; regenerate it")
        for key in ("hash", "split", "source", "caption_transform"):  # what identity() and the card read
            value = _section(doc, "dataset").get(key)
            if value is not None and not isinstance(value, str):
                raise UserError(f"{path}: dataset.{key} is {_shown(value)}, not text; regenerate it")
    return doc


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _shown(value: Any) -> str:
    """A value as a message shows it: its type and at most 40 characters of it."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# ---------------------------------------------------------------------------- typed views
@dataclass
class _JsonRecord:
    """A JSON record read through :func:`read_record`: its file and its parsed document."""

    KIND: ClassVar[str] = ""
    path: Path
    doc: dict[str, Any]

    @classmethod
    def read(cls, path: str | os.PathLike, *, what: str | None = None):
        path = record_path(path, METRICS)
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
        if not isinstance(doc, dict):
            raise UserError(f"{path} is a JSON {type(doc).__name__}, not a record; write it again with the command "
                            "that made it")
        if isinstance(doc.get("kind"), str) and doc["kind"] not in _KIND_NAMES:
            raise UserError(f"{path}: kind {doc['kind'][:40]!r} is not a record this toolkit writes; write it again "
                            "with the command that made it")
        return cls(path=path, doc=checked_record(path, doc, cls.KIND)) if kind_of(doc) == cls.KIND else None

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
        path = record_path(path, TRAIN_CONFIG)
        if not path.exists() and not path.is_symlink():
            raise UserError(f"{path}: no such file; pass a folder written by training/train.py")
        doc = read_yaml_file(path)
        if doc is None:
            raise UserError(f"{path} is empty: a training config has sections (model, data, optim, ...); write it "
                            "again with training/train.py")
        if not isinstance(doc, dict) or not all(isinstance(v, dict) or v is None or k == "name"
                                                for k, v in doc.items()):
            raise UserError(f"{path}: expected the sections of a training config (model, data, optim, ...)")
        for section, values in doc.items():
            for key, value in (values or {}).items() if isinstance(values, dict) else ():
                # settings are scalars or lists of them; model.factory is the one mapping
                nested = isinstance(value, dict) and not (section == "model" and key == "factory")
                if nested or (isinstance(value, list) and not all(_scalar(v) for v in value)):
                    raise UserError(f"{path}: {section}.{key} is {_shown(value)}, not a setting; write it again with "
                                    "training/train.py")
        return cls(path=path, doc=doc)

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


def precision_label(dtype: str | None, quantize: str | None = None,
                    images_per_forward: int | None = None) -> str | None:
    """How a number was computed, in the words the card, the Space and ``reproduce`` all use:
    the dtype ("float32", "bfloat16"), or "int8 weights and activations (float32 elsewhere)"
    when the Linear layers ran int8 (``quantize``, as metrics.json records it), with ", N images
    per forward" when int8 batched them (``images_per_forward``; its captions then depend on the
    batch)."""
    if quantize:
        batched = f", {images_per_forward} images per forward" if (images_per_forward or 1) > 1 else ""
        return f"{quantize} weights and activations ({dtype or 'float32'} elsewhere){batched}"
    return dtype


def record_precision(record: dict[str, Any]) -> str | None:
    """:func:`precision_label` of an eval's metrics.json record."""
    return precision_label(record.get("dtype"), record.get("quantize"), record.get("images_per_forward"))
