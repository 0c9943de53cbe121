"""Batched captioning: the one function every stage uses to turn images into captions.

    from captioning.loading import load_captioner
    from captioning.generation import GenerationSettings, caption_images
    cap = load_captioner("path/to/model")
    captions = caption_images(cap, images, settings=GenerationSettings(num_beams=3))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from captioning.errors import UserError
from captioning.options import MAX_PROMPT_CHARS, option, positive_int
from captioning.vocabulary import DEFAULT_MAX_NEW_TOKENS

if TYPE_CHECKING:  # torch loads when captions are made, not when the settings are read
    import torch

#: upper bounds of the decoding flags: a caption of 4096 tokens is already a long document, and
#: beams and captions cost memory linearly; a larger value is a typo (one with ten zeros would
#: decode for days instead of failing)
MAX_NEW_TOKENS = 4096
MAX_BEAMS = 64


@dataclass
class GenerationSettings:
    """Decoding options. Greedy by default (deterministic)."""

    max_new_tokens: int = option(DEFAULT_MAX_NEW_TOKENS, help=f"longest caption, in tokens (default "
                                                              f"{DEFAULT_MAX_NEW_TOKENS})", group="decoding",
                                 type=positive_int)
    min_new_tokens: int | None = option(None, help="shortest caption, in tokens", group="decoding")
    num_beams: int = option(1, help="beam search with this many beams (default 1: greedy)", group="decoding",
                            type=positive_int)
    do_sample: bool = option(False, help="sample instead of greedy/beam search (seeded by --seed)",
                             flag="--sample", group="decoding")
    temperature: float = option(1.0, help="sampling temperature (default 1.0)", group="decoding")
    top_p: float = option(1.0, help="nucleus sampling: keep the tokens within this probability (default 1.0)",
                          group="decoding")
    top_k: int = option(50, help="sample among the k likeliest tokens (default 50)", group="decoding")
    repetition_penalty: float = option(1.0, help="above 1 discourages repeating tokens (default 1.0)",
                                       group="decoding")
    #: captions per image: N samples when sampling, else the N best beams
    num_captions: int = 1
    #: seeds sampling (per batch) so sampled captions are reproducible
    seed: int | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{f.name.replace('_', '-')} must be a finite number (got {value})")
        for name, limit in (("max_new_tokens", MAX_NEW_TOKENS), ("num_beams", MAX_BEAMS),
                            ("num_captions", MAX_BEAMS)):
            if getattr(self, name) > limit:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} is over the limit of {limit}")
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise UserError("--min-new-tokens must be between 0 and --max-new-tokens")
        if self.num_beams < 1:
            raise UserError("--num-beams must be at least 1")
        if self.num_captions < 1:
            raise UserError("--num-captions must be at least 1")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be from 0 to 2**32 - 1 (got {self.seed})")
        if self.do_sample and self.temperature <= 0:
            raise UserError("--temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise UserError("--top-p must be in (0, 1]")
        if self.top_k < 0:
            raise UserError("--top-k must be >= 0")
        if self.repetition_penalty <= 0:
            raise UserError("--repetition-penalty must be > 0")

    #: flags that only mean something when sampling (transformers warns about them otherwise)
    SAMPLING: ClassVar[tuple[str, ...]] = ("temperature", "top_p", "top_k")

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``model.generate``: every flag field under its own name (they
        are GenerationConfig's names), sampling knobs only when sampling, min_new_tokens only
        when set; ``num_captions`` is ``num_return_sequences``."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)
              if "help" in f.metadata and f.name not in self.SAMPLING and (f.name != "min_new_tokens" or
                                                                              self.min_new_tokens)}
        kw["num_return_sequences"] = self.num_captions
        if self.do_sample:
            kw.update({name: getattr(self, name) for name in self.SAMPLING})
        elif self.num_captions > self.num_beams:
            # N distinct deterministic captions are the N best beams
            kw["num_beams"] = self.num_captions
        return kw

    def to_dict(self) -> dict:
        return asdict(self)


def caption_images(captioner, images: Sequence, prompts: str | Sequence[str | None] | None = None,
                   settings: GenerationSettings | None = None, *, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None, int8_batches: bool = False) -> list[list[str]]:
    """Caption ``images`` (PIL, already through captioning.images.load_image).

    Returns one list of ``settings.num_captions`` captions per image, in input
    order. ``prompts``: None (the model's prompt), one string for all images, or
    one per image. Batches are left padded; families that cannot left pad (BLIP)
    batch only prompts of equal token length, so results never depend on what
    else shares the batch. Mixed prompts are batched by length, so short prompts
    are not padded to a long neighbour's length. ``progress`` is called with the
    number of images done after each batch. ``int8_batches``: an int8 model takes
    ``batch_size`` images per forward too (see :func:`images_per_forward`).
    """
    import torch

    settings = settings or GenerationSettings()
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    batch_size = images_per_forward(captioner, batch_size, int8_batches)
    n = len(images)
    if prompts is None or isinstance(prompts, str):
        per_image = [prompts if isinstance(prompts, str) else captioner.prompt] * n
    else:
        per_image = [p if p is not None else captioner.prompt for p in prompts]
        if len(per_image) != n:
            raise ValueError(f"{len(per_image)} prompts for {n} images")
    longest = max((len(p) for p in per_image if p), default=0)
    if longest > MAX_PROMPT_CHARS:
        raise UserError(f"--prompt is {longest:,} characters, over the limit of {MAX_PROMPT_CHARS:,}: a captioning "
                        "instruction is a sentence or two")
    fam, proc = captioner.family, captioner.processor
    kwargs = settings.generate_kwargs()
    k = settings.num_captions
    results: list[list[str] | None] = [None] * n
    for chunk in _batches(fam, proc, per_image, batch_size):
        with torch.inference_mode():
            inputs = fam.generation_inputs(proc, [images[i] for i in chunk], [per_image[i] for i in chunk])
            inputs = _to_device(inputs, captioner.device, captioner.dtype)
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            texts = fam.decode(proc, fam.generate(captioner.model, inputs, **kwargs), inputs)
        for j, i in enumerate(chunk):
            results[i] = texts[j * k:(j + 1) * k]
        if progress is not None:
            progress(len(chunk))
    return results  # type: ignore[return-value]


def images_per_forward(captioner, batch_size: int, int8_batches: bool = False) -> int:
    """How many images ``caption_images`` puts through one forward for ``batch_size``: 1 at int8,
    unless ``int8_batches``.

    Dynamic int8 layers scale each call's activations by the whole input tensor's range, so
    in a batch one image's caption would depend on its neighbours (and their padding): int8
    captions one image per forward, so its results never depend on the batch. ``int8_batches``
    trades that for throughput, with most captions identical to one image per forward and
    the same CIDEr within noise (BENCHMARKS.md, "int8 serving on CPU": "Batched int8")."""
    int8 = getattr(captioner, "quantize", None) == "int8"
    return 1 if int8 and not int8_batches else batch_size


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


def caption(captioner, image, prompt: str | None = None, settings: GenerationSettings | None = None) -> str:
    """One image, one caption (the first of ``settings.num_captions``)."""
    return caption_images(captioner, [image], prompt, settings, batch_size=1)[0][0]


def _to_device(inputs, device: torch.device, dtype: torch.dtype):
    import torch

    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out
