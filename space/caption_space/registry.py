"""Models load on first use through the captioning core and stay in memory, the most
recently used ones first; generation runs one batch at a time."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from captioning.errors import UserError

from .failures import public_message
from .models import ModelEntry, ModelInfo

try:  # Hugging Face ZeroGPU hardware: generation must run inside a @spaces.GPU function
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

#: the Compare tab's maximum, so comparing four models never reloads one mid-comparison;
#: lower it (--max-loaded / CAPTION_MAX_LOADED) for models that do not fit 4 at a time
DEFAULT_MAX_LOADED = 4
#: a model that failed to load is retried after this long (the fix may be a re-upload)
FAILED_RETRY_S = 60.0
#: images per generate call: the Batch tab's chunks between progress updates, and the batch
#: size captioning.generation is given (an int8 model still takes one image per forward)
GENERATE_BATCH = 8


def stable_ids(infos: Sequence[ModelInfo]) -> dict[str, ModelInfo]:
    """The id each model is addressed by in API calls, in configured order: a hub model's
    repo id (``org/name``, ``org/name@rev`` for a pinned revision), a local folder's
    ``name=`` from ``--models``, else the folder's own name. Never a server path: API
    callers cannot know it, and it says where the server keeps its files. A repeated id
    gets ``-2``, ``-3``... in the order the models are listed."""
    out: dict[str, ModelInfo] = {}
    for info in infos:
        entry = info.entry
        if entry.local:
            base = entry.name or Path(entry.id).expanduser().resolve().name or "model"
        else:
            base = entry.key
        key, n = base, 1
        while key in out:
            n += 1
            key = f"{base}-{n}"
        out[key] = info
    return out


class ModelLoadError(UserError):
    """A configured model could not be loaded; the other models keep working."""


class ModelRegistry:
    """Loads models on first use through the captioning core and keeps the
    ``max_loaded`` most recently used ones in memory (LRU)."""

    def __init__(self, infos: Sequence[ModelInfo], *, max_loaded: int = DEFAULT_MAX_LOADED,
                 device: str = "auto", dtype: str = "auto", loader: Callable[..., Any] | None = None,
                 quantize: str = "auto", prepack: bool = True):
        if max_loaded < 1:
            raise UserError("--max-loaded must be at least 1")
        self.infos = {i.key: i for i in infos}
        self.max_loaded = max_loaded
        self.device, self.dtype = device, dtype
        #: the default for entries that set none: "auto" (int8 on CPU where the family passed the
        #: int8 quality gate, Family.int8_on_cpu), "none" or "int8"
        self.quantize = quantize
        #: fp32 Linear layers prepacked for oneDNN on CPU (captioning.loading's prepack); --no-prepack: plain
        self.prepack = prepack
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
        """The model named ``key``, or a UserError listing the served ones."""
        if key not in self.infos:
            names = ", ".join(self.infos) or "(none)"
            raise UserError(f"unknown model {key!r}: choose one of {names}")
        return self.infos[key]

    def loaded(self) -> list[str]:
        """Keys of the models in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def failure(self, key: str) -> str | None:
        """Why ``key`` last failed to load (None when it did not)."""
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
                # kept for /models' status too: the one line every handler shows (a bug's
                # traceback goes to the log only)
                msg = public_message(e, f"loading {key}")
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
                              device=self.device, dtype=self.dtype, quantize=entry.quantize or self.quantize,
                              prepack=self.prepack)

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


def register(registry: ModelRegistry) -> int:
    """The token :func:`generate` finds ``registry`` by (kept only while it lives)."""
    token = id(registry)
    _REGISTRIES[token] = registry
    return token


def generate(token: int, key: str, images: list, prompt: str | None, settings) -> list[list[str]]:
    """Captions (a list per image) from model ``key`` of the registry ``token`` names."""
    from captioning.generation import caption_images

    registry = _REGISTRIES[token]
    captioner, _ = registry.get(key)
    with registry.generation_lock:
        return caption_images(captioner, images, prompt, settings, batch_size=GENERATE_BATCH)


if spaces is not None:
    # ZeroGPU attaches a GPU only inside functions decorated when the app starts
    generate = spaces.GPU(generate)
