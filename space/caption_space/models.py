"""The models a Space serves: the configured list, and what each model's files say about it
(name, family, prompt, card metrics, whether it is a base, a fine-tune or untrained, the base
it was fine-tuned from), read without loading weights."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from captioning.comparability import read_scores, scores_record
from captioning.errors import UserError
from captioning.files import read_json_file
from captioning.portability import LOCAL, scrub_paths
from captioning.records import (
    FACTORY,
    KIND_FACTORY,
    KIND_RELEASE,
    KIND_TRAINING,
    METRICS,
    RELEASE,
    TRAIN_CONFIG,
    EvalRecord,
    TrainConfigRecord,
    TrainingRecord,
    card_front_matter,
    kind_of,
    read_record,
    record_precision,
)
from captioning.safe_yaml import read_yaml_file
from captioning.vocabulary import QUANTIZE_CHOICES, style_of

SPACE_DIR = Path(__file__).resolve().parent.parent
MODELS_YAML = SPACE_DIR / "models.yaml"
ENV_MODELS = "CAPTION_MODELS"
HUB_URL = "https://huggingface.co"


# --------------------------------------------------------------------------- model list

@dataclass(frozen=True)
class ModelEntry:
    """One model the Space serves, as configured (hub id or local folder)."""

    id: str
    name: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    #: none or int8 for this model; None: the Space's default (--quantize)
    quantize: str | None = None
    #: decoding settings the page has no control for (top_k=20;repetition_penalty=1.2): any
    #: captioning.generation.GenerationSettings flag but those the page sets, as (name, value)
    decoding: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if not self.id or not self.id.strip():
            raise UserError("a model entry has an empty id: give a hub id (org/name) or a model folder")

    @property
    def key(self) -> str:
        """The value the UI and the API use to name this model."""
        return f"{self.id}@{self.revision}" if self.revision else self.id

    @property
    def local(self) -> bool:
        """Whether the id is a local folder rather than a hub id."""
        from captioning.loading import looks_local

        return looks_local(self.id)


_ENTRY_KEYS = ("id", "name", "revision", "trust_remote_code", "quantize")


def _bool_option(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise UserError(f"{where}: trust_remote_code must be true or false, got {value!r}")


#: GenerationSettings fields the page's own controls set (a model entry cannot)
PAGE_SETTINGS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p")


def entry_settings() -> tuple[str, ...]:
    """The decoding settings a model entry may set: every flag of
    captioning.generation.GenerationSettings but those the page sets, so a setting added
    there can be set per model here with no change to the Space."""
    from dataclasses import fields

    from captioning.generation import GenerationSettings

    return tuple(f.name for f in fields(GenerationSettings) if "help" in f.metadata and f.name not in PAGE_SETTINGS)


def _decoding(data: dict, where: str) -> tuple[tuple[str, Any], ...]:
    """An entry's decoding settings, typed and checked by GenerationSettings itself."""
    from captioning.generation import GenerationSettings
    from captioning.options import field_value

    chosen = {k: v for k, v in data.items() if k in entry_settings()}
    try:
        typed = {k: field_value(GenerationSettings, k, v) for k, v in chosen.items()}
        GenerationSettings(**typed)
    except UserError as e:
        raise UserError(f"{where}: {str(e).lstrip('-')}") from None
    return tuple(sorted(typed.items()))


def _entry_from_mapping(data: dict, where: str) -> ModelEntry:
    allowed = _ENTRY_KEYS + entry_settings()
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    if not data.get("id"):
        raise UserError(f"{where}: needs an id (a hub id or a model folder)")
    quantize = str(data["quantize"]).strip().lower() if data.get("quantize") else None
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise UserError(f"{where}: quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {data['quantize']!r}")
    return ModelEntry(id=str(data["id"]).strip(), name=data.get("name") or None,
                      revision=str(data["revision"]) if data.get("revision") else None,
                      trust_remote_code=_bool_option(data.get("trust_remote_code", False), where), quantize=quantize,
                      decoding=_decoding(data, where))


def parse_models(spec: str, *, where: str = "--models") -> list[ModelEntry]:
    """``"ID[;key=value...],ID2,..."`` (commas or newlines between models) -> entries."""
    entries = []
    for chunk in spec.replace("\n", ",").split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        head, *opts = [part.strip() for part in chunk.split(";")]
        data: dict[str, Any] = {"id": head}
        for opt in opts:
            if not opt:
                continue
            if "=" not in opt:
                raise UserError(f"{where}: option {opt!r} of {head!r} is not key=value "
                                "(e.g. trust_remote_code=true)")
            k, v = (s.strip() for s in opt.split("=", 1))
            if not v:
                raise UserError(f"{where}: option {k}= of {head!r} is empty; give it a value or leave it out")
            data[k] = v
        entries.append(_entry_from_mapping(data, f"{where} entry {head!r}"))
    return entries


def read_models_yaml(path: str | Path) -> list[ModelEntry]:
    """Entries from a models.yaml: a list (or ``models:`` list) of ids or mappings."""
    path = Path(path)
    # through captioning.files: no alias bombs, no duplicate keys, FIFOs and link loops named
    data = read_yaml_file(path) if path.exists() or path.is_symlink() else None
    if isinstance(data, dict):
        data = data.get("models")
    if data is None:
        return []
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of models (ids or mappings with an id)")
    entries = []
    for i, item in enumerate(data):
        where = f"{path} item {i + 1}"
        if isinstance(item, str):
            entries.extend(parse_models(item, where=where))
        elif isinstance(item, dict):
            entries.append(_entry_from_mapping(item, where))
        else:
            raise UserError(f"{where}: expected an id or a mapping, got {type(item).__name__}")
    return entries


def configured_models(cli: str | None = None, *, env: dict[str, str] | None = None,
                      yaml_path: str | Path = MODELS_YAML) -> list[ModelEntry]:
    """The models to serve: ``--models``, else ``$CAPTION_MODELS``, else models.yaml."""
    env = os.environ if env is None else env
    if cli:
        return _checked(parse_models(cli), "--models")
    if env.get(ENV_MODELS, "").strip():
        return _checked(parse_models(env[ENV_MODELS], where=ENV_MODELS), ENV_MODELS)
    return _checked(read_models_yaml(yaml_path), str(yaml_path))


def _checked(entries: Sequence[ModelEntry], where: str) -> list[ModelEntry]:
    """``entries`` once each (:func:`dedupe`), every local one an existing folder: a typo in
    a path is said at start, not to the first visitor who picks that model. A folder that
    exists but cannot load (damaged files) still serves the others: picking it shows why."""
    for e in entries:
        folder = Path(e.id).expanduser()
        if e.local and not folder.is_dir():
            raise UserError(f"{where} names {e.id!r}, which is not a folder here: pass a model or release folder, "
                            "or a hub id (namespace/name)")

    return dedupe(entries, where)


def dedupe(entries: Sequence[ModelEntry], where: str = "the model list") -> list[ModelEntry]:
    """``entries`` as they are, or a UserError naming the first model ``where`` lists twice:
    the same hub id (in any case, as the Hub reads it) or the same folder (however it is
    spelled: ``a``, ``./a``, ``a/``) at the same revision."""
    seen: dict[tuple[str, str | None], str] = {}
    for e in entries:
        same = (str(Path(e.id).expanduser().resolve()) if e.local else e.id.lower(), e.revision)
        if same in seen:
            also = "" if seen[same] == e.key else f" (also as {seen[same]!r})"
            raise UserError(f"{where} names model {e.key!r} twice{also}: list each model once")
        seen[same] = e.key
    return list(entries)


# ------------------------------------------------------------------------ model cards

#: what a model is, as its records say: ``base`` (names no base: pretrained, trained from
#: random init, or records silent), ``fine-tune`` (trained from a base it names), ``untrained``
#: (random factory weights that no training step changed)
KIND_BASE, KIND_FINE_TUNE, KIND_UNTRAINED = "base", "fine-tune", "untrained"
_METHODS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}


@dataclass
class ModelInfo:
    """What the Space shows about a model before loading it, read once at start."""

    entry: ModelEntry
    label: str
    family: str | None = None
    #: the prompt it captions with when the user gives none (None: unconditional)
    prompt: str | None = None
    #: False for families that caption without an instruction (BLIP)
    takes_prompt: bool = True
    #: its metrics.json: an eval record, or a training record (validation during training)
    metrics: dict | None = None
    base: str | None = None
    #: weights fingerprints (captioning.records) of this model and of the base it names: a
    #: release of a local base names it by fingerprint alone, and pairs with it that way
    fingerprint: str | None = None
    base_fingerprint: str | None = None
    url: str | None = None
    notes: list[str] = field(default_factory=list)
    #: KIND_BASE, KIND_FINE_TUNE or KIND_UNTRAINED
    kind: str = KIND_BASE
    #: how a fine-tune was trained: "LoRA", "QLoRA", "full" (None: not recorded)
    method: str | None = None
    #: served as an adapter applied to its base (not merged into it)
    adapter: bool = False
    #: trained, starting from random factory weights (no pretrained base)
    from_scratch: bool = False
    #: the caption transform its training applied to the captions (None: plain captions)
    trained_style: str | None = None
    #: the served model this fine-tune names as its base (set by :func:`.lineup.unique_labels`)
    paired_base: ModelInfo | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """The entry's key (what the UI and the API name the model by)."""
        return self.entry.key

    def scores(self) -> EvalRecord | TrainingRecord | None:
        """The metrics.json as the typed record of its kind (None without one)."""
        return scores_record(self.metrics) if self.metrics else None

    def card_metrics(self) -> dict[str, Any]:
        """CIDEr and BLEU-4 with the set they were measured on and how (``measured``: eval,
        or training for validation during training); empty when unknown."""
        m = self.metrics or {}
        scores = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
        ds = m.get("dataset") if isinstance(m.get("dataset"), dict) else {}
        out = {"CIDEr": scores.get("CIDEr"), "Bleu_4": scores.get("Bleu_4"), "n_images": m.get("n_images"),
               # a local dataset as <local>/NAME: where the server keeps it is nobody's business
               "split": ds.get("split"), "dataset": scrub_paths(ds.get("source") or ds.get("id") or ds.get("path")),
               "caption_transform": ds.get("caption_transform") or "none",
               "measured": "training" if kind_of(m) == KIND_TRAINING else "eval",
               "precision": record_precision(m)}
        return out if any(out[k] is not None for k in ("CIDEr", "Bleu_4")) else {}


def base_name(info: ModelInfo) -> str | None:
    """The base a fine-tune names, as a person would call it: the served base's display name,
    else its hub id, else a local folder's name."""
    from captioning.loading import looks_local

    if info.paired_base is not None:
        return info.paired_base.label
    if not info.base:
        return None
    if info.base.startswith(LOCAL) or looks_local(info.base):
        return Path(info.base.rstrip("/")).name
    return info.base


def badge(info: ModelInfo) -> str:
    """The short tag shown beside a model's name: ``base``, ``LoRA fine-tune``, ``LoRA
    adapter``, ``full fine-tune``, ``fine-tune`` or ``untrained``."""
    if info.kind == KIND_UNTRAINED:
        return "untrained"
    if info.kind == KIND_FINE_TUNE:
        what = "adapter" if info.adapter else "fine-tune"
        return f"{info.method} {what}" if info.method else what
    return "base"


def description(info: ModelInfo) -> str:
    """What the records say the model is, in a phrase: ``LoRA fine-tune of shapes-tiny``,
    ``LoRA adapter on shapes-tiny``, ``base model, trained from random init``,
    ``untrained: random weights``."""
    if info.kind == KIND_UNTRAINED:
        return "untrained: random weights"
    if info.kind == KIND_FINE_TUNE:
        base = base_name(info)
        on = f" {'on' if info.adapter else 'of'} {base}" if base else ""
        return badge(info) + on
    return "base model, trained from random init" if info.from_scratch else "base model"


def _fetch_file(entry: ModelEntry, filename: str, notes: list[str]) -> Path | None:
    """A file of the model's folder or hub repo, or None when it has none."""
    if entry.local:
        path = Path(entry.id).expanduser() / filename
        return path if path.is_file() else None
    from huggingface_hub import errors, hf_hub_download

    # the repo simply has no such file (LocalEntryNotFoundError, "offline and not cached",
    # is also an EntryNotFoundError: that one is worth a note)
    absent = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    try:
        return Path(hf_hub_download(entry.id, filename, revision=entry.revision))
    except absent as e:
        if not isinstance(e, errors.LocalEntryNotFoundError):
            return None
        notes.append(f"{filename}: not readable (offline and not cached)")
    except Exception as e:
        notes.append(f"{filename}: not readable ({e.__class__.__name__})")
    return None


def _read(path: Path | None, notes: list[str], read: Callable[[Path], Any]) -> Any:
    """What ``read`` makes of the file, or None with a note when it cannot be used: a model
    with an unreadable file is still served, with less said about it."""
    if path is None:
        return None
    try:
        return read(path)
    except UserError as e:
        notes.append(f"{path.name}: not used ({e})")
        return None


def _card_data(path: Path) -> dict:
    """The card's front matter (empty when it has none); metadata the Hub would reject (a
    malformed model-index) is no reason to ignore base_model."""
    return card_front_matter(path)


def _json_object(path: Path) -> dict | None:
    data = read_json_file(path)
    return data if isinstance(data, dict) else None


def _base_named(card: dict, train_cfg: dict | None, metrics: dict | None) -> str | None:
    """The base model a release names: card ``base_model``, the training config's model,
    or metrics.json's model when it was measured through an adapter."""
    base = card.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    if not base and train_cfg and isinstance(train_cfg.get("model"), dict):
        base = train_cfg["model"].get("name_or_path")
    if not base and metrics and isinstance(metrics.get("model"), dict):
        mm = metrics["model"]
        base = mm.get("base") or (mm.get("id") if mm.get("adapter") else None)
    return str(base) if base else None


def same_model(a: str, b: str) -> bool:
    """Whether two ids name the same model (local paths compared after resolving)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.strip("/").lower() == b.strip("/").lower()


def read_model_info(entry: ModelEntry) -> ModelInfo:
    """Display name, family, prompt, card metrics and base model, without loading weights."""
    from captioning.families import family_for_config, get_family

    notes: list[str] = []
    metrics = _read(_fetch_file(entry, METRICS, notes), notes, lambda p: read_scores(p).doc)
    train_cfg = _read(_fetch_file(entry, TRAIN_CONFIG, notes), notes, lambda p: TrainConfigRecord.read(p).doc)
    card = _read(_fetch_file(entry, "README.md", notes), notes, _card_data) or {}
    config = _read(_fetch_file(entry, "config.json", notes), notes, _json_object)

    family = None
    if train_cfg and isinstance(train_cfg.get("model"), dict):
        family = train_cfg["model"].get("family")
    try:
        fam = get_family(family) if family and family != "auto" else (
            family_for_config(SimpleNamespace(model_type=config.get("model_type"))) if config else None)
    except UserError as e:
        notes.append(str(e))
        fam = None
    prompt = fam.default_prompt if fam else None
    if train_cfg and isinstance(train_cfg.get("data"), dict) and "prompt" in train_cfg["data"]:
        prompt = train_cfg["data"]["prompt"] or None
    label = entry.name or (Path(entry.id).name if entry.local else entry.id)
    if entry.revision and not entry.name:
        label = f"{label}@{entry.revision}"
    base = _base_named(card, train_cfg, metrics)
    manifest = _read(_fetch_file(entry, RELEASE, notes), notes, lambda p: read_record(p, KIND_RELEASE)) or {}
    # only a folder captioning.factory saved has one (releases and training outputs do not)
    factory = _read(Path(entry.id).expanduser() / FACTORY, notes, lambda p: read_record(p, KIND_FACTORY)) \
        if entry.local and (Path(entry.id).expanduser() / FACTORY).is_file() else None
    base_fp = (manifest.get("base") or {}).get("fingerprint")
    if base and same_model(base, entry.id):
        base = None
    info = ModelInfo(entry=entry, label=label, family=fam.name if fam else None, prompt=prompt,
                     takes_prompt=fam is None or fam.default_prompt is not None, metrics=metrics, base=base,
                     fingerprint=manifest.get("weights_fingerprint"), base_fingerprint=base_fp,
                     url=None if entry.local else f"{HUB_URL}/{entry.id}", notes=notes)
    _what_it_is(info, card, train_cfg, manifest, factory)
    return info


def _what_it_is(info: ModelInfo, card: dict, train_cfg: dict | None, manifest: dict,
                factory: dict | None = None) -> None:
    """Fill ``kind``, ``method``, ``adapter`` and ``from_scratch`` from the records: a base named
    anywhere (card, train_config.yaml, metrics.json, release.json's fingerprint) makes a
    fine-tune; the training record's method, else train_config.yaml's lora and quantization
    sections, says how; random factory weights with no base are trained from scratch when a
    training record counts steps or a release was made of them, else untrained (as a folder
    with captioning.factory's record is)."""
    cfg = TrainConfigRecord(path=Path(TRAIN_CONFIG), doc=train_cfg or {})
    training = info.metrics if kind_of(info.metrics) == KIND_TRAINING else None
    trained_model = training.get("model") if training and isinstance(training.get("model"), dict) else {}
    method = _METHODS.get(str(trained_model.get("method") or "").lower())
    lora = cfg.section("lora")
    if method is None and "enabled" in lora:
        method = "full" if not lora["enabled"] else ("QLoRA" if cfg.section("quantization").get("enabled") else "LoRA")
    info.trained_style = style_of(cfg.caption_transform)
    relation = card.get("base_model_relation") or (manifest.get("base") or {}).get("relation")
    info.adapter = manifest.get("release") == "adapter" or (bool(info.base) and relation == "adapter") or (
        info.entry.local and (Path(info.entry.id).expanduser() / "adapter_config.json").is_file())
    if info.base or info.base_fingerprint or info.adapter:
        info.kind, info.method = KIND_FINE_TUNE, method
        return
    if factory is not None and training is None and not manifest:
        info.kind = KIND_UNTRAINED
        return
    if cfg.factory is not None or trained_model.get("factory"):
        # trained only when a training record counts steps, or a release was made of it
        run = training.get("train") if training else None
        steps = run.get("global_step") if isinstance(run, dict) else None
        if (training and steps != 0) or manifest:
            info.from_scratch = True
        else:
            info.kind = KIND_UNTRAINED

