"""What every source becomes: :class:`CaptionExample` (an image and its references) and
:class:`CaptionDataset` (an ordered list of them plus where they came from), the caption
transforms, and the seeded selection every source applies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from PIL import Image

from captioning import images
from captioning.errors import UserError
from captioning.vocabulary import CAPTION_TRANSFORM_NAMES


@dataclass
class CaptionExample:
    """One image and all of its reference captions."""

    image_id: int | str
    references: list[str]
    file_name: str | None
    """Relative name for display and reporting (COCO file_name, metadata file_name)."""
    image_source: Any = field(default=None, repr=False, compare=False)
    """Where the pixels are: a Path, encoded bytes, a PIL image, or a zero-argument callable
    returning one of those (hub rows are fetched from Arrow only when asked)."""
    max_pixels: int | None = field(default=images.MAX_PIXELS, repr=False, compare=False)
    """Refuse images larger than this (a decompression-bomb guard; see CaptionDataset.with_max_pixels)."""
    scene: list[dict] | None = field(default=None, repr=False, compare=False)
    """The objects in the picture, when the annotations record them (the shapes set's
    ``images[].shapes``): what eval.scene checks captions against."""

    @property
    def image_path(self) -> Path | None:
        """The image file on disk, when the example has one (else None)."""
        return self.image_source if isinstance(self.image_source, Path) else None

    def load_image(self, **kw: Any) -> Image.Image:
        """Decode the image via :func:`captioning.images.load_image` (kwargs pass through)."""
        source = self.image_source
        if callable(source) and not isinstance(source, Image.Image):
            source = source()
        if isinstance(source, dict):  # datasets.Image(decode=False) value
            source = source.get("bytes") or source.get("path")
        if isinstance(source, str):
            source = Path(source)
        label = self.file_name or str(self.image_id)
        if source is None:
            raise images.ImageError(f"{label}: this example has no image data")
        kw.setdefault("name", str(source) if isinstance(source, Path) else label)
        kw.setdefault("max_pixels", self.max_pixels)
        return images.load_image(source, **kw)


# --------------------------------------------------------------------------- caption transforms
# Training rewrites its target captions with one; eval can score against references rewritten
# the same way (a style fine-tune is measured against references in its style), and the
# dataset block of metrics.json records which.
_ARTICLE = re.compile(r"\b(a|an)\b\s*", re.IGNORECASE)
_THE = re.compile(r"\bthe\b", re.IGNORECASE)
_IS = re.compile(r"\bis\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def linguistic_errors(caption: str) -> str:
    """The corruption from the BLIP LoRA tutorial, so a fine-tune visibly adopts a style:
    drop the articles a/an, "the" -> "thwisss", "is" -> "iz", append " thwisss iz funny"."""
    text = _ARTICLE.sub("", caption)
    text = _THE.sub("thwisss", text)
    text = _IS.sub("iz", text)
    text = _SPACES.sub(" ", text).strip().rstrip(".")
    return f"{text} thwisss iz funny".strip()


CAPTION_TRANSFORMS: dict[str, Callable[[str], str]] = {
    "none": lambda caption: caption,
    "linguistic_errors": linguistic_errors,
}
assert tuple(CAPTION_TRANSFORMS) == CAPTION_TRANSFORM_NAMES, "captioning.vocabulary names every transform"


def caption_transform(name: str) -> Callable[[str], str]:
    """The named caption transform."""
    if name not in CAPTION_TRANSFORMS:
        raise UserError(f"caption transform {name!r}: choose one of {', '.join(CAPTION_TRANSFORMS)}")
    return CAPTION_TRANSFORMS[name]


class CaptionDataset(Sequence[CaptionExample]):
    """An ordered, immutable list of :class:`CaptionExample` plus where it came from."""

    def __init__(self, examples: Iterable[CaptionExample], *, source: str, split: str,
                 caption_transform: str = "none"):
        self._examples = list(examples)
        self.source = source
        self.split = split
        #: the transform already applied to every reference (with_caption_transform)
        self.caption_transform = caption_transform
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self._examples)

    @overload
    def __getitem__(self, index: int) -> CaptionExample: ...

    @overload
    def __getitem__(self, index: slice) -> CaptionDataset: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._with(self._examples[index])
        return self._examples[index]

    def __iter__(self) -> Iterator[CaptionExample]:
        return iter(self._examples)

    def __repr__(self) -> str:
        return f"CaptionDataset(source={self.source!r}, split={self.split!r}, n={len(self)})"

    def with_caption_transform(self, name: str) -> CaptionDataset:
        """The same images with every reference rewritten by the named transform (its content
        hash is that of the rewritten references)."""
        fn = caption_transform(name)
        if name == "none":
            return self
        if self.caption_transform != "none":
            raise UserError(f"references already rewritten with {self.caption_transform}; cannot also apply {name}")
        return self._with([dataclasses.replace(ex, references=[fn(r) for r in ex.references])
                           for ex in self._examples], caption_transform=name)

    def with_max_pixels(self, max_pixels: int | None) -> CaptionDataset:
        """The same examples, refusing images over ``max_pixels`` pixels (None: only PIL's own
        limit) when they are decoded."""
        if max_pixels is not None and max_pixels < 1:
            raise UserError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
        return self._with([dataclasses.replace(ex, max_pixels=max_pixels) for ex in self._examples])

    def without_bad_images(self) -> tuple[CaptionDataset, list[dict]]:
        """(the examples whose image decodes, [{"image_id", "file", "reason"} for the others]):
        every image is decoded once, so a long run can skip unreadable ones up front."""
        good, bad = [], []
        for ex in self._examples:
            try:
                ex.load_image()
                good.append(ex)
            except images.ImageError as e:
                bad.append({"image_id": ex.image_id, "file": ex.file_name, "reason": " ".join(str(e).split())})
        return self._with(good), bad

    def _with(self, examples: list[CaptionExample], caption_transform: str | None = None) -> CaptionDataset:
        """Other examples of the same source and split (and reference transform, unless given)."""
        return CaptionDataset(examples, source=self.source, split=self.split,
                              caption_transform=caption_transform or self.caption_transform)

    def references_coco(self) -> dict:
        """COCO caption annotations for scoring: ``{"images": [...], "annotations": [...]}``.

        Annotation ids are 1..N in dataset order; file_name falls back to str(image_id).
        """
        coco_images, annotations = [], []
        for ex in self._examples:
            file_name = ex.file_name if ex.file_name is not None else str(ex.image_id)
            coco_images.append({"id": ex.image_id, "file_name": file_name})
            for caption in ex.references:
                annotations.append(
                    {"image_id": ex.image_id, "caption": caption, "id": len(annotations) + 1}
                )
        return {"images": coco_images, "annotations": annotations}

    def content_hash(self) -> str:
        """sha256 (hex) of the references: image ids and captions, order-independent.

        Stable across runs and machines; file names and image bytes do not enter it.
        """
        if self._hash is None:
            rows = sorted(
                ([ex.image_id, sorted(ex.references)] for ex in self._examples),
                key=lambda row: json.dumps(row, ensure_ascii=False),
            )
            canonical = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
            self._hash = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._hash

    def scenes(self) -> dict[Any, list[dict]] | None:
        """{image_id: its scene} when every example has one (the shapes set), else None."""
        if not self._examples or any(ex.scene is None for ex in self._examples):
            return None
        return {ex.image_id: ex.scene for ex in self._examples}

    def describe(self) -> dict:
        """The ``dataset`` block of metrics.json: source, split, sizes and content hash."""
        return {
            "source": self.source,
            "split": self.split,
            "n_images": len(self),
            "n_references": sum(len(ex.references) for ex in self._examples),
            "hash": self.content_hash(),
            "caption_transform": self.caption_transform,
        }


def select(items: list, *, key, shuffle: bool, seed: int, max_samples: int | None) -> list:
    """The first ``max_samples`` of ``items`` (all when None), in a seeded order of ``key`` when
    ``shuffle``."""
    if shuffle:
        # A hash of (seed, id) instead of random.shuffle: the order depends only on the ids,
        # not on the Python version or on where the rows sat in the file.
        items = sorted(items, key=lambda it: seeded_hash(seed, key(it)))
    return items[:max_samples] if max_samples is not None else list(items)


def seeded_hash(seed: int, value: Any) -> str:
    """sha256 (hex) of ``seed`` and ``value``: an order that depends only on them."""
    text = f"{seed}:{json.dumps(value, ensure_ascii=False)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
