"""Batched captioning: the one function every stage uses to turn images into captions.

    from captioning.loading import load_captioner
    from captioning.generation import GenerationSettings, caption_images
    cap = load_captioner("path/to/model")
    captions = caption_images(cap, images, settings=GenerationSettings(num_beams=3))
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

from captioning.errors import UserError

#: Images per forward of the vision tower when ``vision_batch_size="auto"``, by device
#: type (absent: the whole batch at once). On a CPU the text decoder wants big batches
#: (each decode step reads all its weights once for the whole batch), but the vision
#: tower gains nothing past a couple of images - its matrices already have 577-1024 rows
#: per image - and can slow down when a whole batch of activations falls out of the
#: cache (BLIP's eager attention, 12 x 577 x 577 scores per image, was ~20% slower at 8
#: images per forward than at 2 on a 2-core CPU; with the SDPA attention the BLIP family
#: now uses, 1, 2 and 8 measure within noise, and SmolVLM's tower is best near 2; see
#: BENCHMARKS.md). GPUs want the whole batch.
VISION_BATCH_SIZE = {"cpu": 2}

#: Batches captioned at once when ``parallel_batches="auto"``, by device type (absent: one).
#: On a CPU, two batches side by side, each running its ops on its share of torch's threads,
#: beat one batch whose every op is split over all of them: many of a captioner's ops are too
#: small to keep several threads busy (decode steps, layer norms, and even a 2048x768 @
#: 768x768 product: 78-151 GFLOP/s on 2 threads, ~130 for two 1-thread products at once on
#: a 2-core CPU), and one batch's image preprocessing overlaps the other's compute. SmolVLM's
#: tower alone: 1.79 vs 2.10 s per image; batch 16 on 2 cores: SmolVLM 0.432 and 0.466 vs
#: 0.350 and 0.410 images/s in two runs, BLIP 0.761 vs 0.642 (BENCHMARKS.md). Each extra
#: batch in flight costs one batch of activations (there: +430 MB and +800-1050 MB).
PARALLEL_BATCHES = {"cpu": 2}

T = TypeVar("T")


@dataclass
class GenerationSettings:
    """Decoding options. Greedy by default (deterministic)."""

    max_new_tokens: int = 30
    min_new_tokens: int | None = None
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    #: captions per image: N samples when sampling, else the N best beams
    num_captions: int = 1
    #: seeds sampling (per batch) so sampled captions are reproducible
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise UserError("--min-new-tokens must be between 0 and --max-new-tokens")
        if self.num_beams < 1:
            raise UserError("--num-beams must be at least 1")
        if self.num_captions < 1:
            raise UserError("--num-captions must be at least 1")
        if self.do_sample and self.temperature <= 0:
            raise UserError("--temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise UserError("--top-p must be in (0, 1]")
        if self.top_k < 0:
            raise UserError("--top-k must be >= 0")
        if self.repetition_penalty <= 0:
            raise UserError("--repetition-penalty must be > 0")

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``model.generate``; sampling knobs only when sampling
        (transformers warns about them otherwise)."""
        kw = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": self.do_sample,
              "num_return_sequences": self.num_captions, "repetition_penalty": self.repetition_penalty}
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        elif self.num_captions > self.num_beams:
            # N distinct deterministic captions are the N best beams
            kw["num_beams"] = self.num_captions
        return kw

    def to_dict(self) -> dict:
        return asdict(self)


def caption_images(captioner, images: Sequence, prompts: str | Sequence[str | None] | None = None,
                   settings: GenerationSettings | None = None, *, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None,
                   vision_batch_size: int | str | None = "auto",
                   parallel_batches: int | str = "auto") -> list[list[str]]:
    """Caption ``images`` (PIL, already through captioning.images.load_image).

    Returns one list of ``settings.num_captions`` captions per image, in input
    order. ``prompts``: None (the model's prompt), one string for all images, or
    one per image. Batches are left padded; families that cannot left pad (BLIP)
    batch only prompts of equal token length, so results never depend on what
    else shares the batch. Mixed prompts are batched by length, so short prompts
    are not padded to a long neighbour's length. ``progress`` is called with the
    number of images done after each batch. ``vision_batch_size``: images per
    forward of the vision tower inside a batch (None: all at once; "auto": the
    device's entry in VISION_BATCH_SIZE); it changes speed and memory, not captions.
    ``parallel_batches``: batches captioned at once (see ``parallel_batches_for``); it
    too changes speed and memory, not captions.
    """
    settings = settings or GenerationSettings()
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if vision_batch_size == "auto":
        vision_batch_size = VISION_BATCH_SIZE.get(torch.device(captioner.device).type)
    elif vision_batch_size is not None and (not isinstance(vision_batch_size, int) or vision_batch_size < 1):
        raise UserError("vision_batch_size must be at least 1, None (the whole batch) or 'auto'")
    n = len(images)
    if prompts is None or isinstance(prompts, str):
        per_image = [prompts if isinstance(prompts, str) else captioner.prompt] * n
    else:
        per_image = [p if p is not None else captioner.prompt for p in prompts]
        if len(per_image) != n:
            raise ValueError(f"{len(per_image)} prompts for {n} images")
    fam, proc, model = captioner.family, captioner.processor, captioner.model

    lanes = parallel_batches_for(captioner, settings, parallel_batches)
    kwargs = settings.generate_kwargs()
    k = settings.num_captions

    def one_batch(chunk: list[int]) -> Callable[[], tuple[list[int], list[str]]]:
        def run():
            with torch.inference_mode():
                with _TOKENIZER_LOCK:
                    inputs = fam.generation_inputs(proc, [images[i] for i in chunk], [per_image[i] for i in chunk])
                inputs = _to_device(inputs, captioner.device, captioner.dtype)
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                out = fam.generate(model, inputs, **kwargs)
                with _TOKENIZER_LOCK:
                    return chunk, fam.decode(proc, out, inputs)
        return run

    results: list[list[str] | None] = [None] * n
    chunks = plan_batches(list(_batches(fam, proc, per_image, batch_size)), lanes)
    with _vision_in_chunks(model, fam, vision_batch_size):
        for chunk, texts in run_parallel([one_batch(c) for c in chunks], lanes):
            for j, i in enumerate(chunk):
                results[i] = texts[j * k:(j + 1) * k]
            if progress is not None:
                progress(len(chunk))
    return results  # type: ignore[return-value]


def parallel_batches_for(captioner, settings: GenerationSettings | None = None,
                         requested: int | str = "auto") -> int:
    """How many batches ``run_parallel`` should caption at once.

    "auto": the device's entry in PARALLEL_BATCHES, at most torch's thread count. Always one
    when sampling (each batch seeds torch's global random generator, which parallel batches
    would share) and inside a batch that is already running in parallel.
    """
    check_parallel_batches(requested)
    if (settings is not None and settings.do_sample) or getattr(_LANE, "active", False):
        return 1
    if requested == "auto":
        requested = min(PARALLEL_BATCHES.get(torch.device(captioner.device).type, 1), torch.get_num_threads())
    return requested


def check_parallel_batches(value: Any) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"--parallel-batches {value!r}: give a number of batches, at least 1, or auto")


# The processor and its tokenizer are not thread-safe (a Rust tokenizer raises "Already
# borrowed" when one thread sets padding while another encodes), so parallel batches, and
# the Space's concurrent requests, preprocess and decode one at a time.
_TOKENIZER_LOCK = threading.Lock()
_LANE = threading.local()


def plan_batches(batches: list[list[T]], lanes: int) -> list[list[T]]:
    """The batches to run in ``lanes`` parallel lanes: the last ``len(batches) % lanes`` are
    each cut into ``lanes`` near-even pieces, so that no lane idles at the end while another
    runs a whole batch on its share of the threads (three batches of 16 on two lanes: 16,
    16, 8, 8). Batch composition never changes the captions."""
    if lanes <= 1 or not len(batches) % lanes:
        return batches
    cut = len(batches) - len(batches) % lanes
    pieces = []
    for batch in batches[cut:]:
        size = -(-len(batch) // lanes)
        pieces += [batch[i:i + size] for i in range(0, len(batch), size)]
    return batches[:cut] + pieces


def run_parallel(jobs: Sequence[Callable[[], T]], n: int) -> Iterator[T]:
    """Run ``jobs`` up to ``n`` at a time and yield their results in job order.

    Each job runs in a worker thread with its share of the caller's torch intra-op threads
    (at least one) and a copy of the caller's context variables; torch's grad and inference
    modes are per thread, so a job sets its own. One lane, or a single job, runs inline on
    all the threads. At most ``2 * n`` jobs are queued at a time, so a job that loads its
    own inputs holds them only while it runs. If a job raises, the queued ones are
    cancelled, the running ones finish, and the error propagates. (concurrent.futures has
    no ordered, bounded map, hence this helper.)
    """
    n = min(n, len(jobs))
    if n <= 1:
        for job in jobs:
            yield job()
        return
    share = max(1, torch.get_num_threads() // n)

    def init():
        torch.set_num_threads(share)
        _LANE.active = True

    pool = ThreadPoolExecutor(n, thread_name_prefix="caption-batch", initializer=init)
    pending: collections.deque = collections.deque()
    source = iter(jobs)
    try:
        while True:
            # twice n queued: a lane that finishes early starts the next job at once
            while len(pending) < 2 * n and (job := next(source, None)) is not None:
                pending.append(pool.submit(contextvars.copy_context().run, job))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batches(fam, proc, per_image: list[str | None], batch_size: int) -> Iterator[list[int]]:
    """Image indices, batch by batch. Families that cannot left pad get one group per
    prompt token length; with mixed prompts the others are ordered by prompt length so
    a batch pads little. One prompt for all images keeps the input order."""
    groups: dict[int, list[int]] = {}
    if fam.pads_left:
        order = list(range(len(per_image)))
        if len(set(per_image)) > 1:
            tok = fam.tokenizer(proc)
            length = {p: len(tok(fam.build_prompt(proc, p), add_special_tokens=False)["input_ids"])
                      for p in set(per_image)}
            order.sort(key=lambda i: length[per_image[i]])  # stable: ties keep input order
        groups[0] = order
    else:
        for i, p in enumerate(per_image):
            groups.setdefault(fam.prompt_length(proc, p), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            yield idx[start:start + batch_size]


# One wrapper per vision module, shared by concurrent callers (the Space captions from
# several threads): installed by the first caller, removed by the last; each caller's
# chunk size travels in a context variable, so threads never see each other's.
_VISION_CHUNK: contextvars.ContextVar[int | None] = contextvars.ContextVar("vision_chunk", default=None)
_PATCH_LOCK = threading.Lock()
_PATCHED: dict[int, list] = {}  # id(module) -> [module, users, instance-level forward it had]


@contextlib.contextmanager
def _vision_in_chunks(model, fam, chunk: int | None) -> Iterator[None]:
    """While active, the family's vision tower (the outermost modules matching
    ``fam.vision_pattern``) runs over at most ``chunk`` images per forward.

    transformers has no such option (generate encodes a whole batch of images in one
    forward), so the tower's ``forward`` is wrapped on the instance and restored on exit.
    Each image is encoded independently, so chunking does not change what is computed.
    """
    if not chunk or not fam.vision_pattern:
        yield
        return
    names = fam.module_names(model, fam.vision_pattern)
    outermost = [n for n in names if not any(n.startswith(o + ".") for o in names)]
    modules = dict(model.named_modules())
    mine = [modules[n] for n in outermost]
    with _PATCH_LOCK:
        for mod in mine:
            entry = _PATCHED.get(id(mod))
            if entry is None:
                own = mod.__dict__.get("forward")  # an instance-level forward set by someone else
                original = mod.forward
                mod.forward = functools.wraps(original)(functools.partial(_chunked_forward, original))
                _PATCHED[id(mod)] = [mod, 1, own]
            else:
                entry[1] += 1
    token = _VISION_CHUNK.set(chunk)
    try:
        yield
    finally:
        _VISION_CHUNK.reset(token)
        with _PATCH_LOCK:
            for mod in mine:
                entry = _PATCHED[id(mod)]
                entry[1] -= 1
                if entry[1] == 0:
                    del _PATCHED[id(mod)]
                    if entry[2] is None:
                        del mod.forward
                    else:
                        mod.forward = entry[2]


def _chunked_forward(forward: Callable, *args, **kwargs):
    """Call ``forward`` on slices of at most the current chunk size along the batch
    dimension (the first dimension of the first tensor argument; every tensor argument of
    that length is sliced) and concatenate the outputs."""
    chunk = _VISION_CHUNK.get()
    first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    if not chunk or first is None or first.dim() == 0 or first.shape[0] <= chunk:
        return forward(*args, **kwargs)
    n = first.shape[0]

    def piece(value, start):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
            return value[start:start + chunk]
        return value

    outs = [forward(*[piece(a, s) for a in args], **{k: piece(v, s) for k, v in kwargs.items()})
            for s in range(0, n, chunk)]
    return _concat(outs)


def _concat(outs: list[Any]):
    """Join per-chunk outputs: tensors on dim 0; ModelOutputs/dicts field by field;
    tuples element by element (per-layer hidden states); lists end to end (per-image
    items); anything else is taken from the first chunk."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs) if first.dim() > 0 else first
    if isinstance(first, dict):  # transformers' ModelOutput is an OrderedDict
        return type(first)(**{k: _concat([o.get(k) for o in outs]) for k in first.keys()})
    if isinstance(first, tuple):
        return type(first)(_concat(list(parts)) for parts in zip(*outs))
    if isinstance(first, list):
        return [item for o in outs for item in o]
    return first


def caption(captioner, image, prompt: str | None = None, settings: GenerationSettings | None = None) -> str:
    """One image, one caption (the first of ``settings.num_captions``)."""
    return caption_images(captioner, [image], prompt, settings, batch_size=1)[0][0]


def _to_device(inputs, device: torch.device, dtype: torch.dtype):
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out
