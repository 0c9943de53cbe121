"""Validation that measures captioning: captions generated for a fixed val subset from
image + prompt alone, scored with eval.scoring (one warm Scorer per run).

The generation path is captioning.generation.caption_images, the same one eval/ and the
Space use, so a validation number is what `eval/run.py generate` would report for the same
images (CIDEr-D takes idf from the scored set: numbers depend on the subset size). Scoring follows
the same rule too: an empty caption (the model stopped at once) scores as matching nothing and is
listed. A validation never ends the run: a failure of captioning or scoring comes back as
:attr:`Validation.error`, the same on every process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from captioning.cli import cut, one_line
from captioning.generation import GenerationSettings, caption_images
from captioning.loading import Captioner


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class Validation:
    """The captioning part of one validation: ``scores`` ({metric: value}) and ``empty`` (ids of
    the images whose caption was empty, each scored as matching nothing), or ``error`` (one line:
    captioning or scoring failed, ``scores`` is empty)."""

    scores: dict[str, float] = field(default_factory=dict)
    empty: list = field(default_factory=list)
    error: str | None = None


class ValidationFailed(Exception):
    """Captioning failed on some process; the message is one line (every process raises it)."""


def failure(err: BaseException) -> str:
    """``err`` as one line: its type and the start of its message."""
    return f"{type(err).__name__}: {cut(one_line(err), 300)}"


class CaptionEvaluator:
    """Caption ``examples`` with the model being trained and score them against
    ``references`` (COCO dict, already through the caption transform).

    Only images and the prompt reach the model: references are used after generation,
    for scoring. In multi-process runs each process captions a strided shard, process 0
    scores, and every process receives the same numbers (so early stopping and the best
    checkpoint agree everywhere).
    """

    def __init__(self, examples: Sequence, references: dict, *, family, processor, prompt: str | None,
                 settings: GenerationSettings, metrics: Sequence[str], batch_size: int = 8,
                 scorer_factory: Callable[[], Any] | None = None, base_ref: str | None = None):
        self.ids = [ex.image_id for ex in examples]
        self.file_names = [ex.file_name for ex in examples]
        # decoded at each validation, not held: 500 COCO images would pin ~0.5 GB for the run
        self.examples = examples
        self.references = references
        self.family, self.processor, self.prompt = family, processor, prompt
        self.settings, self.metrics, self.batch_size = settings, list(metrics), batch_size
        self._scorer_factory = scorer_factory
        self._scorer = None
        self.base_ref = base_ref
        #: predictions of every validation, by global step (COCO results lists)
        self.predictions: dict[int, list[dict]] = {}
        self.result: dict | None = None

    @property
    def scorer(self):
        if self._scorer is None:
            from eval.scoring import Scorer

            self._scorer = self._scorer_factory() if self._scorer_factory else Scorer()
        return self._scorer

    def close(self) -> None:
        """Stop the scorer's JVMs if this evaluator started them."""
        if self._scorer is not None and self._scorer_factory is None:
            self._scorer.close()
        self._scorer = None

    def captioner(self, model) -> Captioner:
        from training.modeling import compute_dtype

        device = next(model.parameters()).device
        return Captioner(model=model, processor=self.processor, family=self.family, source=self.base_ref or "",
                         device=device, dtype=compute_dtype(model), prompt=self.prompt)

    def generate(self, model) -> list[dict]:
        """COCO results ``[{"image_id", "caption"}]`` for the whole subset (every process);
        :class:`ValidationFailed` on every process when captioning failed on any."""
        rank, world = _dist()
        idx = list(range(rank, len(self.examples), world))
        mine: list = []
        error = None
        try:
            mine = self._caption(model, idx)
        except Exception as err:  # shared below, so that no process waits on another
            error = failure(err)
        if world > 1:
            parts: list = [None] * world
            torch.distributed.all_gather_object(parts, (mine, error))
            error = next((e for _, e in parts if e), None)
            mine = [p for part, _ in parts for p in part]
        if error is not None:
            raise ValidationFailed(error)
        mine.sort()
        return [{"image_id": self.ids[i], "caption": c} for i, c in mine]

    def _caption(self, model, idx: list[int]) -> list[tuple[int, str]]:
        """(position, caption) of the examples at ``idx``, the model in eval mode meanwhile."""
        was_training = model.training
        model.eval()
        try:
            images = [self.examples[i].load_image() for i in idx]
            caps = caption_images(self.captioner(model), images, None, self.settings, batch_size=self.batch_size)
        finally:
            model.train(was_training)
        return [(i, c[0]) for i, c in zip(idx, caps)]

    def evaluate(self, model, step: int = 0) -> Validation:
        """Generate, score on process 0, share the outcome: the same :class:`Validation` on
        every process. Never raises for a failure of captioning or scoring (see ``error``)."""
        try:
            preds = self.generate(model)
        except ValidationFailed as err:
            return Validation(error=str(err))
        self.predictions[step] = preds
        rank, world = _dist()
        out: list = [None]
        if rank == 0:
            out = [self._score(preds)]
        if world > 1:
            torch.distributed.broadcast_object_list(out, src=0)
        return out[0]

    def _score(self, preds: list[dict]) -> Validation:
        """Score ``preds`` the way `eval/run.py generate` does: an empty caption matches nothing."""
        try:
            result = self.scorer.score(self.references, preds, metrics=self.metrics, allow_empty=True)
            self.result = result
            return Validation(scores={m: result["metrics"][m] for m in self.metrics},
                              empty=list(result.get("empty_captions") or []))
        except Exception as err:  # a validation never ends the run
            return Validation(error=failure(err))

    def names(self, ids: Sequence) -> list[str]:
        """The file names (or ids) of the images with ``ids``."""
        by_id = {i: f or i for i, f in zip(self.ids, self.file_names)}
        return [str(by_id.get(i, i)) for i in ids]

    def samples(self, step: int, n: int = 3) -> list[str]:
        """A few "file: caption" lines of the validation at ``step`` (for the log)."""
        preds = self.predictions.get(step, [])
        return [f"{self.file_names[i] or self.ids[i]}: {p['caption']!r}" for i, p in enumerate(preds[:n])]


def perplexity(loss: float | None) -> float | None:
    """exp(mean token loss); capped so a diverged run logs a number, not an overflow."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))
