"""The Gradio Space: caption images and compare captioning models side by side.

    python space/app.py --models demo_out/release/tiny-smolvlm-ft,demo_out/models/tiny-smolvlm
    python space/app.py --models "HuggingFaceTB/SmolVLM-256M-Instruct,Salesforce/blip-image-captioning-base"
    CAPTION_MODELS="org/my-captioner" python space/app.py --host 0.0.0.0 --port 7860

Models come from ``--models``, else the ``CAPTION_MODELS`` environment variable (how a
deployed Space is configured), else ``space/models.yaml``. Each entry is a hub id or a
local folder, optionally followed by ``;key=value`` options: ``name=`` (display name),
``revision=``, ``trust_remote_code=true`` (never implied: only an explicit entry runs a
repository's own code). Models load lazily on first use and stay cached (``--max-loaded``).

Importing this module has no side effects beyond making ``captioning`` importable:
:func:`build_demo` builds the app, :func:`main` launches it.
"""

from __future__ import annotations

import os

# Before gradio (and huggingface_hub) are imported: no version check, no telemetry posts.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import base64
import binascii
import csv
import gc
import html
import io
import json
import logging
import sys
import tempfile
import threading
import time
import weakref
import zipfile
from abc import ABCMeta
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent


def _make_captioning_importable() -> None:
    """A deployed Space ships ``captioning/`` next to app.py (``release space`` copies it);
    in the repository it is one level up. Put whichever holds it first on sys.path."""
    for root in (HERE, HERE.parent):
        if (root / "captioning" / "__init__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return


_make_captioning_importable()

import gradio as gr  # noqa: E402
import yaml  # noqa: E402

from captioning.cli import ArgumentParser, guarded, pop_debug  # noqa: E402
from captioning.errors import UserError  # noqa: E402
from captioning.images import load_image  # noqa: E402
from captioning.records import (  # noqa: E402
    KIND_RELEASE,
    LOCAL,
    METRICS,
    RELEASE,
    TRAIN_CONFIG,
    EvalRecord,
    TrainConfigRecord,
    not_comparable,
    read_record,
    weights_fingerprint,
    write_atomic,
)

try:  # Hugging Face ZeroGPU hardware: generation must run inside a @spaces.GPU function
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

log = logging.getLogger("space")

MODELS_YAML = HERE / "models.yaml"
EXAMPLES_DIR = HERE / "examples"
ENV_MODELS = "CAPTION_MODELS"
ENV_MAX_LOADED = "CAPTION_MAX_LOADED"
ENV_SOURCE_URL = "CAPTION_SOURCE_URL"  # link to the toolkit's source, shown in About when set
HUB_URL = "https://huggingface.co"

#: the Compare tab's maximum, so comparing four models never reloads one mid-comparison;
#: lower it (--max-loaded / CAPTION_MAX_LOADED) for models that do not fit 4 at a time
DEFAULT_MAX_LOADED = 4
#: larger uploads are resized to this many pixels before the processor sees them: the
#: processors shrink to <= 2048 px (SmolVLM with splitting) anyway, and a 50 MP photo
#: would otherwise cost seconds of resizing per request
DOWNSCALE_PIXELS = 2048 * 2048
#: uploads over this are refused: a public server needs a tighter bomb guard than a laptop
#: (captioning.images.MAX_PIXELS); a 48 MP phone photo (8064 x 6048) still passes
SPACE_MAX_PIXELS = 50_000_000
MAX_NEW_TOKENS = 128
MAX_BEAMS = 8
MAX_VARIATIONS = 5
MAX_COMPARE = 4
MAX_PROMPT_CHARS = 500
#: batch limits: images per request, bytes per zip member, uncompressed bytes per zip
MAX_BATCH_IMAGES = 64
MAX_MEMBER_BYTES = 32 * 2**20
MAX_ZIP_BYTES = 256 * 2**20
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: a model that failed to load is retried after this long (the fix may be a re-upload)
FAILED_RETRY_S = 60.0
BATCH_COLUMNS = ["file", "caption", "model", "error"]


# --------------------------------------------------------------------------- model list

@dataclass(frozen=True)
class ModelEntry:
    """One model the Space serves, as configured (hub id or local folder)."""

    id: str
    name: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self):
        if not self.id or not self.id.strip():
            raise UserError("a model entry has an empty id: give a hub id (org/name) or a model folder")

    @property
    def key(self) -> str:
        """The value the UI and the API use to name this model."""
        return f"{self.id}@{self.revision}" if self.revision else self.id

    @property
    def local(self) -> bool:
        from captioning.loading import looks_local

        return looks_local(self.id)


_ENTRY_KEYS = ("id", "name", "revision", "trust_remote_code")


def _bool_option(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise UserError(f"{where}: trust_remote_code must be true or false, got {value!r}")


def _entry_from_mapping(data: dict, where: str) -> ModelEntry:
    unknown = sorted(set(data) - set(_ENTRY_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(_ENTRY_KEYS)}")
    if not data.get("id"):
        raise UserError(f"{where}: needs an id (a hub id or a model folder)")
    return ModelEntry(id=str(data["id"]).strip(), name=data.get("name") or None,
                      revision=str(data["revision"]) if data.get("revision") else None,
                      trust_remote_code=_bool_option(data.get("trust_remote_code", False), where))


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
            data[k] = v
        entries.append(_entry_from_mapping(data, f"{where} entry {head!r}"))
    return entries


def read_models_yaml(path: str | Path) -> list[ModelEntry]:
    """Entries from a models.yaml: a list (or ``models:`` list) of ids or mappings."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e.__class__.__name__}); fix the file") from e
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
        return parse_models(cli)
    if env.get(ENV_MODELS, "").strip():
        return parse_models(env[ENV_MODELS], where=ENV_MODELS)
    return read_models_yaml(yaml_path)


def _dedupe(entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.key in seen:
            raise UserError(f"model {e.key!r} is listed twice: list each model once")
        seen.add(e.key)
        out.append(e)
    return out


# ------------------------------------------------------------------------ model cards

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
    metrics: dict | None = None
    base: str | None = None
    #: weights fingerprints (captioning.records) of this model and of the base it names: a
    #: release of a local base names it by fingerprint alone, and pairs with it that way
    fingerprint: str | None = None
    base_fingerprint: str | None = None
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.entry.key

    def card_metrics(self) -> dict[str, Any]:
        """CIDEr and BLEU-4 with the set they were measured on (empty when unknown)."""
        m = self.metrics or {}
        scores = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
        ds = m.get("dataset") if isinstance(m.get("dataset"), dict) else {}
        out = {"CIDEr": scores.get("CIDEr"), "Bleu_4": scores.get("Bleu_4"), "n_images": m.get("n_images"),
               "split": ds.get("split"), "dataset": ds.get("source") or ds.get("id") or ds.get("path"),
               "caption_transform": ds.get("caption_transform") or "none"}
        return out if any(out[k] is not None for k in ("CIDEr", "Bleu_4")) else {}


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


def _read_json_file(path: Path | None, notes: list[str]) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path.name}: unreadable ({e.__class__.__name__})")
        return None
    return data if isinstance(data, dict) else None


def _read_record(path: Path | None, notes: list[str], read: Callable[[Path], Any]) -> dict | None:
    """A record through captioning.records, or None with a note when it cannot be used."""
    if path is None:
        return None
    try:
        return read(path).doc
    except UserError as e:
        notes.append(f"{path.name}: not used ({e})")
        return None


def _front_matter(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        text = path.read_text()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


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
    metrics = _read_record(_fetch_file(entry, METRICS, notes), notes, EvalRecord.read)
    train_cfg = _read_record(_fetch_file(entry, TRAIN_CONFIG, notes), notes, TrainConfigRecord.read)
    card = _front_matter(_fetch_file(entry, "README.md", notes))
    config = _read_json_file(_fetch_file(entry, "config.json", notes), notes)

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
    manifest = _read_record(_fetch_file(entry, RELEASE, notes), notes,
                            lambda p: SimpleNamespace(doc=read_record(p, KIND_RELEASE))) or {}
    base_fp = (manifest.get("base") or {}).get("fingerprint")
    if base and same_model(base, entry.id):
        base = None
    return ModelInfo(entry=entry, label=label, family=fam.name if fam else None, prompt=prompt,
                     takes_prompt=fam is None or fam.default_prompt is not None, metrics=metrics, base=base,
                     fingerprint=manifest.get("weights_fingerprint"), base_fingerprint=base_fp,
                     url=None if entry.local else f"{HUB_URL}/{entry.id}", notes=notes)


def _unique_labels(infos: list[ModelInfo]) -> None:
    seen: dict[str, int] = {}
    for info in infos:
        n = seen.get(info.label, 0) + 1
        seen[info.label] = n
        if n > 1:
            info.label = f"{info.label} ({n})"


def _fingerprint(info: ModelInfo) -> str | None:
    """The weights fingerprint of a served model: recorded in its release.json, else hashed
    from a local folder, only when a release asks for its base this way."""
    if info.fingerprint is None and info.entry.local:
        try:
            info.fingerprint = weights_fingerprint(Path(info.entry.id).expanduser())
        except UserError as e:
            info.notes.append(str(e))
    return info.fingerprint


def base_pairs(infos: Sequence[ModelInfo]) -> list[tuple[ModelInfo, ModelInfo]]:
    """(base, fine-tune) pairs where a model names its base (by id, or by the weights
    fingerprint a release records) and the base is served too."""
    pairs = []
    for ft in infos:
        if not ft.base and not ft.base_fingerprint:
            continue
        for base in infos:
            if base is ft:
                continue
            if (ft.base and same_model(ft.base, base.entry.id)) or (
                    ft.base_fingerprint and ft.base_fingerprint == _fingerprint(base)):
                pairs.append((base, ft))
                break
    return pairs


# ---------------------------------------------------------------------------- registry

class ModelLoadError(UserError):
    """A configured model could not be loaded; the other models keep working."""


class ModelRegistry:
    """Loads models on first use through the captioning core and keeps the
    ``max_loaded`` most recently used ones in memory (LRU)."""

    def __init__(self, infos: Sequence[ModelInfo], *, max_loaded: int = DEFAULT_MAX_LOADED,
                 device: str = "auto", dtype: str = "auto", loader: Callable[..., Any] | None = None):
        if max_loaded < 1:
            raise UserError("--max-loaded must be at least 1")
        self.infos = {i.key: i for i in infos}
        self.max_loaded = max_loaded
        self.device, self.dtype = device, dtype
        self._loader = loader
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._failed: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._key_locks = {k: threading.Lock() for k in self.infos}
        #: one generate at a time: seeded sampling uses torch's global RNG, processors
        #: toggle their tokenizer's padding side, and one accelerator runs one batch best
        self.generation_lock = threading.Lock()
        self.load_count = 0

    def info(self, key: str) -> ModelInfo:
        if key not in self.infos:
            names = ", ".join(self.infos) or "(none)"
            raise UserError(f"unknown model {key!r}: choose one of {names}")
        return self.infos[key]

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def failure(self, key: str) -> str | None:
        with self._lock:
            failed = self._failed.get(key)
        return failed[0] if failed else None

    def get(self, key: str) -> tuple[Any, float]:
        """The loaded captioner for ``key`` and the seconds spent loading it now (0 when cached)."""
        info = self.info(key)
        with self._key_locks[key]:
            with self._lock:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key], 0.0
                failed = self._failed.get(key)
            if failed and time.monotonic() - failed[1] < FAILED_RETRY_S:
                raise ModelLoadError(f"model {info.label} failed to load: {failed[0]}")
            start = time.perf_counter()
            try:
                captioner = self._load(info.entry)
            except Exception as e:
                msg = str(e) if isinstance(e, UserError) else f"{e.__class__.__name__}: {e}"
                if not isinstance(e, UserError):
                    log.exception("loading %s failed", key)
                with self._lock:
                    self._failed[key] = (msg, time.monotonic())
                raise ModelLoadError(f"model {info.label} failed to load: {msg}") from None
            seconds = time.perf_counter() - start
            self._learn(info, captioner)
            with self._lock:
                self._failed.pop(key, None)
                self._loaded[key] = captioner
                self.load_count += 1
                evicted = []
                while len(self._loaded) > self.max_loaded:
                    evicted.append(self._loaded.popitem(last=False))
            if evicted:
                del evicted
                _free_memory()
            return captioner, seconds

    def _load(self, entry: ModelEntry):
        if self._loader is not None:
            return self._loader(entry)
        from captioning.loading import load_captioner

        return load_captioner(entry.id, revision=entry.revision, trust_remote_code=entry.trust_remote_code,
                              device=self.device, dtype=self.dtype)

    @staticmethod
    def _learn(info: ModelInfo, captioner) -> None:
        """The loaded model knows its family and prompt for sure: keep the card in step."""
        fam = getattr(captioner, "family", None)
        if fam is not None and getattr(fam, "name", None):
            info.family = fam.name
            info.takes_prompt = fam.default_prompt is not None
            info.prompt = getattr(captioner, "prompt", info.prompt)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# Registries by token, so the (possibly forked, ZeroGPU) generation function gets a
# small picklable key rather than a model object.
_REGISTRIES: weakref.WeakValueDictionary[int, ModelRegistry] = weakref.WeakValueDictionary()


def _generate(token: int, key: str, images: list, prompt: str | None, settings) -> list[list[str]]:
    from captioning.generation import caption_images

    registry = _REGISTRIES[token]
    captioner, _ = registry.get(key)
    with registry.generation_lock:
        return caption_images(captioner, images, prompt, settings, batch_size=8)


if spaces is not None:
    _generate = spaces.GPU(_generate)


# ------------------------------------------------------------------------ input hygiene

def _refuse_url(path) -> None:
    from gradio_client.utils import is_http_url_like

    if path is not None and is_http_url_like(str(path)):
        raise gr.Error("URLs are not fetched: upload the image file itself", print_exception=False)


class _NoUrlFetch:
    """Gradio downloads an input given as an http(s) URL on the server; this Space never
    fetches a URL a user sends, so such inputs are refused before any request is made."""

    def move_resource_to_block_cache(self, url_or_file_path):
        _refuse_url(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        _refuse_url(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


def _raw_image(self, payload):
    """The upload as (path or bytes, original name), undecoded.

    gr.Image would open (and for other modes decode) the file itself, so a corrupt
    file or a decompression bomb would fail inside Gradio with no useful message;
    here every byte goes through captioning.images.load_image instead.
    """
    if payload is None:
        return None
    name = payload.orig_name or "uploaded image"
    if payload.url and payload.url.startswith("data:"):
        try:
            return base64.b64decode(payload.url.split(",", 1)[1], validate=False), name
        except (IndexError, binascii.Error, ValueError):
            raise gr.Error(f"{_esc(name)}: not valid image data", print_exception=False) from None
    if payload.path is None:
        return None
    return payload.path, name


def _component_subclass(name: str, base: type, **methods) -> type:
    """A subclass of a Gradio component that the stock front end renders.

    Built with ABCMeta.__new__ instead of the ``class`` statement: Gradio's ComponentMeta
    writes a .pyi stub next to the module of every component subclass (a file written
    into the Space folder on import), and for a subclass without its own __init__ or
    EVENTS that stub is all it would add. A subclass, rather than patched instances,
    because Gradio re-creates a component from its class whenever an event updates it.
    """
    block = base.__name__.lower()
    attrs = {"__module__": __name__, "__qualname__": name, "__doc__": methods.pop("doc", None),
             "get_block_name": lambda self: block, "get_block_class": lambda self: block, **methods}
    return ABCMeta.__new__(type(base), name, (_NoUrlFetch, base), attrs)


#: image input (upload, paste, webcam) handing the handler the raw upload, never fetching URLs
ImageInput = _component_subclass("ImageInput", gr.Image, preprocess=_raw_image,
                                 doc="gr.Image whose handler gets (path or bytes, name), undecoded.")
#: file input that never fetches URLs
FilesInput = _component_subclass("FilesInput", gr.File, doc="gr.File that refuses URL inputs.")


def image_input(**kwargs) -> gr.Image:
    """An image input for the handlers above (type filepath, no conversion by Gradio)."""
    return ImageInput(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"], **kwargs)


def _esc(text: str) -> str:
    # gr.Error renders HTML; file names come from users
    return html.escape(str(text), quote=False)


def _user_error(e: Exception) -> gr.Error:
    return gr.Error(_esc(str(e)), print_exception=False)


# ------------------------------------------------------------------------------ the app

@dataclass
class Limits:
    """Image limits applied to every input (uploads, webcam, paste, zip members)."""

    max_pixels: int | None = SPACE_MAX_PIXELS
    downscale_pixels: int | None = DOWNSCALE_PIXELS

    def __post_init__(self):
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UserError(f"--max-pixels must be a positive number of pixels, got {self.max_pixels}")


class CaptionSpace:
    """Handlers behind the UI (plain methods, so tests call them directly)."""

    def __init__(self, infos: Sequence[ModelInfo], registry: ModelRegistry, limits: Limits):
        self.infos = list(infos)
        self.registry = registry
        self.limits = limits
        self.token = id(registry)
        _REGISTRIES[self.token] = registry
        self._out_dir: Path | None = None
        self.pairs = base_pairs(self.infos)

    @property
    def out_dir(self) -> Path:
        """Where batch CSV/JSON files are written (made on first use; Gradio serves
        returned files from the system temp dir)."""
        if self._out_dir is None:
            self._out_dir = Path(tempfile.mkdtemp(prefix="caption-space-"))
        return self._out_dir

    # ---------------------------------------------------------------- helpers
    def _image(self, value, what: str = "image"):
        if value is None:
            raise gr.Error(f"Upload an {what} first (or pick an example).", print_exception=False)
        if isinstance(value, tuple):
            source, name = value
        else:  # a plain path (gradio_client with another front end, tests)
            source, name = value, Path(str(value)).name
        return self._load(source, name)

    def _load(self, source, name: str):
        try:
            return load_image(source, name=name, max_pixels=self.limits.max_pixels,
                              downscale_pixels=self.limits.downscale_pixels)
        except UserError as e:
            raise _user_error(e) from None

    @staticmethod
    def settings(max_new_tokens, num_beams, temperature, top_p, seed, num_captions: int = 1):
        """UI values -> GenerationSettings (temperature 0: greedy or beam search)."""
        from captioning.generation import GenerationSettings

        try:
            max_new_tokens, num_beams, num_captions = int(max_new_tokens), int(num_beams), int(num_captions)
            temperature, top_p = float(temperature), float(top_p)
            seed = None if seed is None or int(seed) < 0 else int(seed)
        except (TypeError, ValueError, OverflowError):
            raise gr.Error("settings must be numbers", print_exception=False) from None
        checks = [(1 <= max_new_tokens <= MAX_NEW_TOKENS, f"max new tokens must be 1-{MAX_NEW_TOKENS}"),
                  (1 <= num_beams <= MAX_BEAMS, f"beams must be 1-{MAX_BEAMS}"),
                  (1 <= num_captions <= MAX_VARIATIONS, f"variations must be 1-{MAX_VARIATIONS}"),
                  (0 <= temperature <= 2, "temperature must be 0-2 (0: no sampling)"),
                  (0 < top_p <= 1, "top-p must be in (0, 1]")]
        for ok, msg in checks:
            if not ok:
                raise gr.Error(msg, print_exception=False)
        sample = temperature > 0
        try:
            return GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=sample,
                                      temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0,
                                      num_captions=num_captions, seed=seed)
        except UserError as e:
            raise _user_error(e) from None

    def _prompt_for(self, info: ModelInfo, prompt: str | None) -> str | None:
        prompt = (prompt or "").strip()
        if len(prompt) > MAX_PROMPT_CHARS:
            raise gr.Error(f"the prompt is longer than {MAX_PROMPT_CHARS} characters", print_exception=False)
        if prompt and not info.takes_prompt:
            raise gr.Error(f"{_esc(info.label)} ({info.family}) captions without a prompt: leave it empty",
                           print_exception=False)
        return prompt or None

    def _run(self, key: str, images: list, prompt: str | None, settings):
        """(captions, captioner, load seconds, generation seconds); a model that cannot
        load raises ModelLoadError, bad settings for this model gr.Error."""
        captioner, load_s = self.registry.get(key)
        start = time.perf_counter()
        try:
            out = _generate(self.token, key, images, prompt, settings)
        except ModelLoadError:
            raise
        except UserError as e:
            raise _user_error(e) from None
        except Exception as e:
            log.exception("generation with %s failed", key)
            raise gr.Error(_esc(f"{self.registry.info(key).label}: generation failed ({e.__class__.__name__}: {e})"),
                           print_exception=False) from None
        return out, captioner, load_s, time.perf_counter() - start

    def _info(self, key) -> ModelInfo:
        if not key:
            raise gr.Error("Choose a model.", print_exception=False)
        try:
            return self.registry.info(str(key))
        except UserError as e:
            raise _user_error(e) from None

    # --------------------------------------------------------------- handlers
    def caption(self, image, model, prompt, max_new_tokens, num_beams, temperature, top_p, variations, seed):
        """One image, one model -> captions (one per line) and the time it took."""
        info = self._info(model)
        settings = self.settings(max_new_tokens, num_beams, temperature, top_p, seed, variations)
        img = self._image(image)
        prompt = self._prompt_for(info, prompt)
        try:
            out, cap, load_s, gen_s = self._run(info.key, [img], prompt, settings)
        except ModelLoadError as e:
            raise _user_error(e) from None
        timing = f"**{load_s + gen_s:.2f} s** · generation {gen_s:.2f} s"
        if load_s:
            timing += f" · model load {load_s:.2f} s"
        timing += f" · {cap.device.type}, {str(cap.dtype).replace('torch.', '')}"
        return "\n".join(out[0]), timing

    def compare(self, image, models, max_new_tokens, num_beams, temperature, top_p, seed):
        """One image, 2-4 models, the same settings -> cards (HTML) and the raw results."""
        models = [models] if isinstance(models, str) else list(models or [])
        if not 2 <= len(models) <= MAX_COMPARE:
            raise gr.Error(f"Pick 2 to {MAX_COMPARE} models to compare (got {len(models)}).",
                           print_exception=False)
        if len(set(models)) != len(models):
            raise gr.Error("Each model can be picked once.", print_exception=False)
        infos = [self._info(m) for m in models]
        settings = self.settings(max_new_tokens, num_beams, temperature, top_p, seed)
        img = self._image(image)
        results = []
        first = next((i for i in infos if i.metrics), None)
        for info in infos:
            row: dict[str, Any] = {"model": info.key, "name": info.label, "family": info.family, "caption": None,
                                   "seconds": None, "load_seconds": None, "error": None,
                                   "card_metrics": info.card_metrics() or None,
                                   "card_not_comparable": card_not_comparable(first, info)}
            try:
                out, _, load_s, gen_s = self._run(info.key, [img], None, settings)
                row.update(caption=out[0][0], seconds=round(gen_s, 4), load_seconds=round(load_s, 4))
            except gr.Error as e:
                row["error"] = e.message
            except ModelLoadError as e:
                row["error"] = str(e)
            results.append(row)
        return compare_html(results), results

    def batch(self, files, model, max_new_tokens, num_beams, temperature, top_p, seed,
              progress=gr.Progress()):  # noqa: B008 - how Gradio injects a progress tracker
        """Several images (or zips of images) -> table + CSV + JSON downloads."""
        info = self._info(model)
        settings = self.settings(max_new_tokens, num_beams, temperature, top_p, seed)
        paths = [files] if isinstance(files, str) else list(files or [])
        if not paths:
            raise gr.Error("Upload images (or a .zip of images) first.", print_exception=False)
        progress(0, desc="reading images")
        items = self._batch_items(paths)
        rows: list[dict[str, str]] = []
        good: list[tuple[int, Any]] = []
        for name, source in items:
            rows.append({"file": name, "caption": "", "model": info.label, "error": ""})
            try:
                good.append((len(rows) - 1, self._load(source, name)))
            except gr.Error as e:
                rows[-1]["error"] = html.unescape(e.message)
        if good:
            progress(0, desc=f"loading {info.label}")
            try:
                self.registry.get(info.key)
            except ModelLoadError as e:
                raise _user_error(e) from None
            done = 0
            progress((0, len(good)), desc="captioning", unit="images")
            for start in range(0, len(good), 8):
                chunk = good[start:start + 8]
                try:
                    out = self._run(info.key, [img for _, img in chunk], None, settings)[0]
                except ModelLoadError as e:  # evicted by another request and now failing
                    raise _user_error(e) from None
                for (row, _), caps in zip(chunk, out, strict=True):
                    rows[row]["caption"] = caps[0]
                done += len(chunk)
                progress((done, len(good)), desc="captioning", unit="images")
        csv_path, json_path = self._write_batch(rows)
        n_err = sum(1 for r in rows if r["error"])
        summary = f"{len(rows) - n_err} of {len(rows)} images captioned with **{_esc(info.label)}**"
        if n_err:
            summary += f"; {n_err} could not be read (see the error column)"
        table = [[r[c] for c in BATCH_COLUMNS] for r in rows]
        return table, str(csv_path), str(json_path), summary

    def _batch_items(self, paths: list) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = []
        for p in paths:
            p = Path(str(p))
            if p.suffix.lower() == ".zip":
                items.extend(_zip_members(p))
            else:
                items.append((p.name, p))
            if len(items) > MAX_BATCH_IMAGES:
                raise gr.Error(f"At most {MAX_BATCH_IMAGES} images per batch.", print_exception=False)
        if not items:
            raise gr.Error("No images found in the upload (png, jpg, webp, bmp, gif, tif).",
                           print_exception=False)
        return items

    def _write_batch(self, rows: list[dict]) -> tuple[Path, Path]:
        _prune(self.out_dir, max_age_s=3600)
        stem = f"captions-{time.strftime('%Y%m%d-%H%M%S')}-{threading.get_ident() % 10000:04d}"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=BATCH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        csv_path = write_atomic(self.out_dir / f"{stem}.csv", buf.getvalue())
        json_path = write_atomic(self.out_dir / f"{stem}.json", json.dumps(rows, indent=2, ensure_ascii=False))
        return csv_path, json_path

    def model_info(self, model):
        """Model picked in the Caption tab -> prompt box state and a one-line card."""
        info = self._info(model)
        if info.takes_prompt:
            prompt = gr.Textbox(interactive=True, placeholder=f"default: {info.prompt or '(none)'}")
        else:
            prompt = gr.Textbox(value="", interactive=False,
                                placeholder=f"{info.family or 'this model'} captions without a prompt")
        return prompt, card_line(info)

    def models_table(self):
        """Every configured model: key, name, family, card metrics, whether it is in memory."""
        loaded = set(self.registry.loaded())
        rows = []
        for info in self.infos:
            m = info.card_metrics()
            failure = self.registry.failure(info.key)
            state = "in memory" if info.key in loaded else ("failed: " + failure if failure else "not loaded")
            rows.append([info.key, info.label, info.family or "?", _fmt(m.get("CIDEr")), _fmt(m.get("Bleu_4")),
                         m.get("n_images") or "", m.get("split") or "", state])
        return rows

    def preset(self, index: int):
        base, ft = self.pairs[index]
        return [base.key, ft.key]


MODELS_COLUMNS = ["model", "name", "family", "CIDEr", "BLEU-4", "n_images", "split", "status"]


def _zip_members(path: Path) -> list[tuple[str, bytes]]:
    """Image members of an uploaded zip, read into memory with size caps.

    Nothing is extracted to disk (so member paths cannot escape anywhere) and each
    read is capped by bytes actually read, not by the header's claim, so a zip bomb
    stops at the limit.
    """
    out: list[tuple[str, bytes]] = []
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for zi in zf.infolist():
                name = zi.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if zi.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                    continue
                if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                label = f"{path.name}/{'/'.join(p for p in parts if p not in ('..', '/'))}"
                if len(out) >= MAX_BATCH_IMAGES:
                    raise gr.Error(f"At most {MAX_BATCH_IMAGES} images per batch.", print_exception=False)
                if zi.flag_bits & 0x1:
                    raise gr.Error(f"{_esc(label)}: encrypted zip members are not supported", print_exception=False)
                if zi.file_size > MAX_MEMBER_BYTES:
                    raise gr.Error(f"{_esc(label)}: {zi.file_size:,} bytes uncompressed, over the "
                                   f"{MAX_MEMBER_BYTES:,}-byte limit per image", print_exception=False)
                with zf.open(zi) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
                if len(data) > MAX_MEMBER_BYTES:
                    raise gr.Error(f"{_esc(label)}: over the {MAX_MEMBER_BYTES:,}-byte limit per image",
                                   print_exception=False)
                total += len(data)
                if total > MAX_ZIP_BYTES:
                    raise gr.Error(f"{_esc(path.name)}: over {MAX_ZIP_BYTES:,} bytes uncompressed in all",
                                   print_exception=False)
                out.append((label, data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise gr.Error(f"{_esc(path.name)}: not a readable zip ({e.__class__.__name__})",
                       print_exception=False) from None
    return out


def _prune(folder: Path, max_age_s: float) -> None:
    now = time.time()
    for p in folder.glob("captions-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
        except OSError:
            pass


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def metrics_line(info: ModelInfo) -> str:
    """``CIDEr 0.812 · BLEU-4 0.254 (16 images, test split)`` or ''; a score against
    references rewritten in a fine-tune's style says so."""
    m = info.card_metrics()
    if not m:
        return ""
    parts = [f"{name} {_fmt(m[k])}" for name, k in (("CIDEr", "CIDEr"), ("BLEU-4", "Bleu_4")) if m.get(k) is not None]
    styled = m.get("caption_transform", "none") != "none"
    where = ", ".join(x for x in (f"{m['n_images']} images" if m.get("n_images") else "",
                                  f"{m['split']} split" if m.get("split") else "",
                                  f"references in {m['caption_transform']} style" if styled else "") if x)
    return " · ".join(parts) + (f" ({where})" if where else "")


def card_line(info: ModelInfo) -> str:
    bits = [f"**{_esc(info.label)}**", f"family: {info.family or '?'}"]
    line = metrics_line(info)
    if line:
        bits.append(line)
    if info.base:
        shown = "a local model" if info.base.startswith(LOCAL) else info.base
        bits.append(f"fine-tuned from {_esc(shown)}")
    return " · ".join(bits)


def card_not_comparable(first: ModelInfo | None, info: ModelInfo) -> str | None:
    """Why ``info``'s card numbers cannot stand beside ``first``'s (captioning.records: other
    references, split, caption transform, image count, tokenization), with ``first``
    named; None when they can, or when either has no numbers."""
    if first is None or info is first or not info.metrics:
        return None
    why = not_comparable(EvalRecord(path=Path(METRICS), doc=first.metrics), EvalRecord(path=Path(METRICS),
                                                                                        doc=info.metrics))
    return f"not comparable with {first.label}'s: {', '.join(why)}" if why else None


def compare_html(results: list[dict]) -> str:
    """Side-by-side cards; every value escaped (captions and names are untrusted text)."""
    cards = []
    for r in results:
        m = r.get("card_metrics") or {}
        if r.get("error"):
            body = (f'<div class="cmp-error" style="color:#b91c1c;white-space:pre-wrap">'
                    f'{html.escape(html.unescape(r["error"]))}</div>')
        else:
            body = (f'<div class="cmp-caption" style="font-size:1.1em;margin:.4em 0;white-space:pre-wrap">'
                    f'{html.escape(r["caption"])}</div>'
                    f'<div class="cmp-latency" style="opacity:.75">{r["seconds"]:.2f} s'
                    + (f' (+ {r["load_seconds"]:.2f} s model load)' if r.get("load_seconds") else "")
                    + "</div>")
        if m:
            scores = " · ".join(f"{n} {_fmt(m.get(k))}" for n, k in (("CIDEr", "CIDEr"), ("BLEU-4", "Bleu_4"))
                                if m.get(k) is not None)
            where = ", ".join(x for x in (f"{m['n_images']} images" if m.get("n_images") else "",
                                          f"{m['split']} split" if m.get("split") else "") if x)
            card = (f'<div class="cmp-metrics" style="margin-top:.4em;font-size:.9em">card: {html.escape(scores)}'
                    + (f" <span style='opacity:.7'>({html.escape(where)})</span>" if where else "") + "</div>")
            if r.get("card_not_comparable"):
                card += (f'<div class="cmp-warn" style="margin-top:.2em;font-size:.85em;color:#b45309">'
                         f'{html.escape(r["card_not_comparable"])}</div>')
        else:
            card = '<div class="cmp-metrics" style="margin-top:.4em;font-size:.9em;opacity:.6">no card metrics</div>'
        cards.append(
            '<div class="cmp-card" style="flex:1 1 0;min-width:180px;padding:.8em;border-radius:8px;'
            'border:1px solid var(--border-color-primary, #ccc)">'
            f'<div class="cmp-title" style="font-weight:600">{html.escape(r["name"])}</div>'
            f'<div style="font-size:.8em;opacity:.6">{html.escape(r.get("family") or "?")}</div>'
            f"{body}{card}</div>")
    return f'<div class="cmp-row" style="display:flex;gap:.8em;flex-wrap:wrap">{"".join(cards)}</div>'


def about_markdown(infos: Sequence[ModelInfo], api_model: str | None, compare_models: list[str]) -> str:
    """The About tab: models with their card metrics and links, and the API."""
    lines = ["## Models", "",
             "| model | family | CIDEr | BLEU-4 | images | split | dataset | repo |",
             "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        m = info.card_metrics()
        link = f"[{info.entry.id}]({info.url})" if info.url else f"`{info.entry.id}` (local folder)"
        cells = [info.label, info.family or "?", _fmt(m.get("CIDEr")), _fmt(m.get("Bleu_4")),
                 str(m.get("n_images") or ""), str(m.get("split") or ""), str(m.get("dataset") or ""), link]
        lines.append("| " + " | ".join(_esc(c).replace("|", "\\|") if c is not link else c for c in cells) + " |")
    lines += ["", "Card metrics come from each model's `metrics.json` (COCO caption metrics, 0-1 scale); "
              "CIDEr depends on the evaluated set, so compare numbers measured on the same split and size.",
              ""]
    source = os.environ.get(ENV_SOURCE_URL, "").strip()
    if source.startswith(("https://", "http://")):
        lines += [f"Source of this Space and the training toolkit: [{source}]({source})", ""]
    lines += ["## API", "",
              "Every action is an API endpoint (see *Use via API* at the bottom of the page):", "",
              "```python", "from gradio_client import Client, handle_file", "",
              f'client = Client("{os.environ.get("SPACE_ID", "OWNER/SPACE")}")'
              '  # or the local URL, e.g. "http://127.0.0.1:7860/"',
              "captions, timing = client.predict(",
              f'    handle_file("photo.jpg"), {api_model!r}, "",  # image, model, prompt ("" = model default)',
              "    30, 1, 0.0, 1.0, 1, -1,  # max new tokens, beams, temperature (0 = greedy), top-p, "
              "variations, seed",
              '    api_name="/caption")',
              "cards_html, results = client.predict(",
              f'    handle_file("photo.jpg"), {compare_models!r},',
              '    30, 1, 0.0, 1.0, -1, api_name="/compare")',
              "table, csv_file, json_file, summary = client.predict(",
              f'    [handle_file("a.jpg"), handle_file("b.png")], {api_model!r},',
              '    30, 1, 0.0, 1.0, -1, api_name="/batch")',
              'models = client.predict(api_name="/models")',
              "```"]
    return "\n".join(lines)


THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
#captions textarea { font-size: 1.05em; }
footer { opacity: .7; }
"""


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch``: theme/css (Gradio 6 takes them here), no SSR
    (a Node process that outlives close()), an upload size cap. System fonts only, so
    the page never loads web fonts from a third party."""
    return dict(theme=gr.themes.Soft(**THEME_FONTS), css=CSS, ssr_mode=False, max_file_size="50mb",
                footer_links=["api", "settings"], share=False)


def build_demo(models: Sequence[str | ModelEntry], *, max_loaded: int = DEFAULT_MAX_LOADED, device: str = "auto",
               dtype: str = "auto", limits: Limits | None = None, concurrency_limit: int = 2,
               max_queue: int = 64, examples_dir: str | Path | None = EXAMPLES_DIR,
               loader: Callable[..., Any] | None = None) -> gr.Blocks:
    """The Space as a gr.Blocks (queued, not launched). ``models``: entries, or strings
    in the ``--models`` syntax (``ID[;key=value...]``).

    Reads each model's card files once; weights load on first use. The handlers are
    reachable as ``demo.caption_space`` (a :class:`CaptionSpace`).
    """
    entries = _dedupe([e for m in models
                       for e in ([m] if isinstance(m, ModelEntry) else parse_models(str(m), where="models"))])
    if not entries:
        raise UserError("no models to serve: pass --models ID_OR_FOLDER[,...], set CAPTION_MODELS, "
                        "or list them in space/models.yaml")
    infos = [read_model_info(e) for e in entries]
    _unique_labels(infos)
    registry = ModelRegistry(infos, max_loaded=max_loaded, device=device, dtype=dtype, loader=loader)
    app = CaptionSpace(infos, registry, limits or Limits())
    choices = [(i.label, i.key) for i in infos]
    first = infos[0]
    examples = sorted(p for p in Path(examples_dir).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if examples_dir and Path(examples_dir).is_dir() else []

    with gr.Blocks(title="Image captioning", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# Image captioning\nCaption images with small vision-language models, and compare "
                    "base and fine-tuned models side by side.")
        with gr.Accordion("Generation settings (used by every tab)", open=True):
            with gr.Row():
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=30, step=1, label="Max new tokens",
                                    elem_id="max_new_tokens")
                beams = gr.Slider(1, MAX_BEAMS, value=1, step=1, label="Beams", elem_id="num_beams")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature",
                                        info="0 = deterministic (greedy / beam search)", elem_id="temperature")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p", info="used when sampling",
                                  elem_id="top_p")
                seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 = random", elem_id="seed")
        settings = [max_new, beams, temperature, top_p]

        with gr.Tabs():
            with gr.Tab("Caption", id="caption"):
                with gr.Row():
                    with gr.Column():
                        image = image_input(label="Image", elem_id="caption_image", height=320)
                        if examples:
                            gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples",
                                        examples_per_page=12)
                    with gr.Column():
                        model = gr.Dropdown(choices, value=first.key, label="Model", elem_id="caption_model")
                        card = gr.Markdown(card_line(first), label="card", elem_id="caption_card")
                        prompt = gr.Textbox(label="Prompt (instruct models)", lines=1, max_lines=3,
                                            interactive=first.takes_prompt, elem_id="prompt",
                                            placeholder=(f"default: {first.prompt or '(none)'}" if first.takes_prompt
                                                         else f"{first.family} captions without a prompt"))
                        variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations",
                                               info="with temperature > 0: diverse samples; "
                                                    "else the best beams", elem_id="variations")
                        go = gr.Button("Caption", variant="primary", elem_id="caption_btn")
                        captions = gr.Textbox(label="Captions (one per line)", lines=2, max_lines=6,
                                              interactive=False, buttons=["copy"], elem_id="captions")
                        timing = gr.Markdown(label="timing", elem_id="caption_time")
                model.change(app.model_info, inputs=model, outputs=[prompt, card], api_name="model_info")
                go.click(app.caption, inputs=[image, model, prompt, *settings, variations, seed],
                         outputs=[captions, timing], api_name="caption")

            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_image = image_input(label="Image", elem_id="compare_image", height=260)
                    with gr.Column():
                        cmp_models = gr.Dropdown(choices, value=[i.key for i in infos[:2]], multiselect=True,
                                                 max_choices=MAX_COMPARE, label=f"Models (2-{MAX_COMPARE})",
                                                 elem_id="compare_models")
                        for n, (base, ft) in enumerate(app.pairs):
                            btn = gr.Button(f"Base vs fine-tuned: {base.label} vs {ft.label}", size="sm",
                                            elem_id=f"preset_{n}")
                            btn.click(lambda n=n: app.preset(n), outputs=cmp_models, api_name=f"preset_{n}")
                        cmp_go = gr.Button("Compare", variant="primary", elem_id="compare_btn")
                        gr.Markdown("Same settings for every model; each uses its own prompt.")
                cmp_out = gr.HTML(label="cards", elem_id="compare_cards")
                with gr.Accordion("Raw results (JSON)", open=False):
                    cmp_json = gr.JSON(label="results", elem_id="compare_json")
                cmp_go.click(app.compare, inputs=[cmp_image, cmp_models, *settings, seed],
                             outputs=[cmp_out, cmp_json], api_name="compare")

            with gr.Tab("Batch", id="batch"):
                with gr.Row():
                    files = FilesInput(file_count="multiple", file_types=["image", ".zip"],
                                       label=f"Images or a .zip (up to {MAX_BATCH_IMAGES} images)",
                                       elem_id="batch_files")
                    with gr.Column():
                        b_model = gr.Dropdown(choices, value=first.key, label="Model", elem_id="batch_model")
                        b_go = gr.Button("Caption all", variant="primary", elem_id="batch_btn")
                        b_summary = gr.Markdown(label="summary", elem_id="batch_summary")
                        with gr.Row():
                            b_csv = gr.DownloadButton("Download CSV", elem_id="batch_csv")
                            b_json = gr.DownloadButton("Download JSON", elem_id="batch_json")
                b_table = gr.Dataframe(headers=BATCH_COLUMNS, interactive=False, wrap=True, label="captions",
                                       elem_id="batch_table")
                b_go.click(app.batch, inputs=[files, b_model, *settings, seed],
                           outputs=[b_table, b_csv, b_json, b_summary], api_name="batch")

            with gr.Tab("About", id="about"):
                status = gr.Dataframe(headers=MODELS_COLUMNS, interactive=False, label="Models (live status)",
                                      elem_id="models_table")
                refresh = gr.Button("Refresh", size="sm", elem_id="models_refresh")
                gr.Markdown(about_markdown(infos, first.key, [i.key for i in infos[:2]]), elem_id="about_md")
                refresh.click(app.models_table, outputs=status, api_name="models")
        demo.load(app.models_table, outputs=status, api_name="models_on_load")

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    demo.caption_space = app
    return demo


# ----------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python space/app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated hub ids or folders (default: $CAPTION_MODELS, "
                                          "then space/models.yaml)")
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0; locally the default stays on loopback.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to serve on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--max-loaded", type=int, default=int(os.environ.get(ENV_MAX_LOADED, DEFAULT_MAX_LOADED)),
                        help="models kept in memory at once (least recently used ones are dropped)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPUs, fp32 on CPU), fp32, bf16, fp16")
    parser.add_argument("--concurrency", type=int, default=2, help="requests worked on at once")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting before new ones are refused")
    parser.add_argument("--max-pixels", type=int,
                        default=int(os.environ.get("CAPTION_MAX_PIXELS", SPACE_MAX_PIXELS)),
                        help=f"refuse uploads over this many pixels (default: $CAPTION_MAX_PIXELS, else "
                             f"{SPACE_MAX_PIXELS:,}); larger-than-needed images are downscaled before captioning")
    argv, debug = pop_debug(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage mistake already printed as one line
        return int(exc.code or 0)
    built = []
    rc = guarded(lambda: built.append(build_demo(
        configured_models(args.models), max_loaded=args.max_loaded, device=args.device, dtype=args.dtype,
        limits=Limits(max_pixels=args.max_pixels), concurrency_limit=args.concurrency, max_queue=args.max_queue)),
        debug=debug)
    if rc:
        return rc
    demo = built[0]
    print(f"serving {len(demo.caption_space.infos)} model(s) on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)
    try:
        demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs())
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
