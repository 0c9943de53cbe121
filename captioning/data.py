"""One loader for captioning datasets: :func:`load_captions` -> :class:`CaptionDataset`.

Sources (``source`` argument):

* **COCO caption annotations** - a folder holding ``annotations/captions_<split>.json`` (the
  shapes set and the COCO originals: ``python -m captioning.shapes --out DIR`` writes one),
  or a path to such a ``.json`` file. Images are looked up per file under ``images_dir``
  when given, else under ``DIR/images``, ``DIR/images/<split>``, ``DIR/<split>`` and ``DIR``
  (for a ``.json`` path, DIR is the folder above ``annotations/``, or the json's folder).
  So both ``file_name: "train/000001.png"`` (shapes) and bare COCO names
  (``COCO_val2014_000000391895.jpg`` in ``DIR/val2014``) resolve. image_id = the COCO id.
* **Image folder** (HF ``imagefolder`` convention) - ``metadata.jsonl`` or ``metadata.csv``
  with ``file_name`` and ``caption`` (or ``text``: one string) or ``captions`` (a list; a
  JSON-encoded list in CSV). Rows sharing a ``file_name`` are merged. Splits are the
  subfolders ``DIR/<split>/metadata.*``; a folder with only a top-level metadata file is a
  single split, named ``train`` (as in HF) or after the folder itself. image_id = file_name.
* **Hub dataset ids** listed in :data:`HUB_DATASETS` (the one table of column mappings),
  through ``datasets.load_dataset``. When the hub is offline (``HF_HUB_OFFLINE`` /
  ``HF_DATASETS_OFFLINE``) and nothing is cached, this fails at once with a UserError.

Loading never decodes an image: examples hold a path (or a handle into the Arrow data) and
decode through :func:`captioning.images.load_image` only when asked.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from PIL import Image

from captioning import images
from captioning.errors import UserError

__all__ = [
    "HUB_DATASETS",
    "CaptionDataset",
    "CaptionExample",
    "HubSpec",
    "load_captions",
]

log = logging.getLogger(__name__)

#: Group rows by the image's bytes when a hub dataset has no id or file-name column.
BY_IMAGE_CONTENT = "@image-content"


@dataclass(frozen=True)
class HubSpec:
    """How one hub dataset's columns map onto :class:`CaptionExample`."""

    captions: str
    """Column with one caption (str) or all captions (list of str) of a row."""
    image: str | None = "image"
    """``datasets.Image`` column; None when images live elsewhere (see ``images_dir``)."""
    group_by: tuple[str, ...] = ()
    """Columns identifying the image of a row, first present wins; rows sharing it become
    one example. ``BY_IMAGE_CONTENT`` hashes the image bytes. Empty: one row per image."""
    image_id: str | None = None
    """Column used as image_id (default: the group key)."""
    file_name: tuple[str, ...] = ()
    """Columns joined with "/" into the relative file name (display, and the path under
    ``images_dir`` when ``image`` is None)."""
    splits: tuple[str, ...] = ("train", "validation", "test")
    """Split names the hub serves (ours are the same)."""
    derive_splits: tuple[tuple[str, float], ...] = ()
    """When set, the hub serves only ``train`` and we cut it into these splits BY IMAGE."""
    split_seed: int = 0
    needs_images_dir: str = ""
    """Non-empty: the rows carry no image bytes; this text says where to get the images."""
    note: str = ""


# One row per known hub id. Column names were taken from the dataset cards; they cannot be
# checked from this machine (no hub access), so a mismatch fails with the columns found.
HUB_DATASETS: dict[str, HubSpec] = {
    # One row per caption (image, filename, cocoid, caption); Karpathy splits.
    "jxie/coco_captions": HubSpec(
        captions="caption",
        image="image",
        group_by=("cocoid", "filename"),
        image_id="cocoid",
        file_name=("filename",),
    ),
    # One row per image (filepath, filename, sentences: list, cocoid, url): no image bytes.
    "yerevann/coco-karpathy": HubSpec(
        captions="sentences",
        image=None,
        group_by=("cocoid",),
        image_id="cocoid",
        file_name=("filepath", "filename"),
        needs_images_dir=(
            "it lists COCO 2014 image URLs, not images: download COCO 2014 and pass "
            "--images-dir DIR with DIR/train2014 and DIR/val2014"
        ),
    ),
    # Assumed (not checkable offline): one train split with columns image and text, one
    # row per caption or per image and no id column; we group rows by image content and
    # cut a fixed 90/5/5 split by image so no image sits in two splits.
    "ariG23498/flickr8k": HubSpec(
        captions="text",
        image="image",
        group_by=("image_id", "filename", "file_name", BY_IMAGE_CONTENT),
        splits=("train",),
        derive_splits=(("train", 0.90), ("validation", 0.05), ("test", 0.05)),
        note="splits derived here: 90/5/5 by image, fixed seed",
    ),
}


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


# --------------------------------------------------------------------------- entry point


def load_captions(
    source: str,
    split: str,
    *,
    max_samples: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    images_dir: str | None = None,
    streaming: bool = False,
) -> CaptionDataset:
    """Load ``split`` of a captioning dataset (COCO json/folder, image folder or hub id).

    ``shuffle`` orders examples by a seeded hash of their image ids (deterministic across
    runs, machines and library versions); ``max_samples`` then keeps the first N images.
    ``images_dir`` points COCO json files (and ``yerevann/coco-karpathy``) at their images.
    ``streaming`` (hub only; needs ``max_samples``, refuses ``shuffle``) reads just the
    first N images instead of the whole split; local sources are always read lazily.
    Every problem with the inputs raises a one-line :class:`UserError`.
    """
    if not isinstance(split, str) or not split:
        raise UserError(f"split must be a non-empty name such as 'train', got {split!r}")
    if max_samples is not None and (isinstance(max_samples, bool) or max_samples < 1):
        raise UserError(f"max_samples must be a positive number of images, got {max_samples!r}")
    source = os.fspath(source)
    path = Path(source).expanduser()
    images_root = Path(images_dir).expanduser() if images_dir else None
    if images_root is not None and not images_root.is_dir():
        raise UserError(f"--images-dir {images_dir}: no such folder")

    if path.is_file():
        if path.suffix.lower() != ".json":
            raise UserError(
                f"{source}: a file dataset must be a COCO captions .json; for an image folder "
                "pass the folder holding metadata.jsonl or metadata.csv"
            )
        rows, roots = _coco_rows_from_json(path, split, images_root)
        return _finish(rows, roots, source, split, max_samples, shuffle, seed)
    if path.is_dir():
        if (path / "annotations").is_dir():
            json_path = path / "annotations" / f"captions_{split}.json"
            if not json_path.is_file():
                found = sorted(
                    p.name[len("captions_") : -len(".json")]
                    for p in (path / "annotations").glob("captions_*.json")
                )
                raise UserError(
                    f"{source}: no annotations/captions_{split}.json; splits found: "
                    f"{', '.join(found) or 'none'}"
                )
            rows, roots = _coco_rows_from_json(json_path, split, images_root, anchor=path)
            return _finish(rows, roots, source, split, max_samples, shuffle, seed)
        if images_root is not None:
            raise UserError(
                f"--images-dir applies to COCO .json sources; {source} is an image folder "
                "whose metadata file names are relative to it"
            )
        rows, root = _imagefolder_rows(path, split)
        hint = f"file_name in the metadata file is relative to {root}"
        return _finish(rows, [root], source, split, max_samples, shuffle, seed, hint)
    if source in HUB_DATASETS:
        return _load_hub(source, split, HUB_DATASETS[source], max_samples=max_samples,
                         shuffle=shuffle, seed=seed, images_dir=images_root, streaming=streaming)
    raise UserError(
        f"{source}: no such file or folder, and not a known hub dataset "
        f"(known: {', '.join(sorted(HUB_DATASETS))}). Use a local copy: a COCO captions "
        ".json (with --images-dir), a folder with annotations/captions_<split>.json, or an "
        "image folder with metadata.jsonl/csv; another hub id needs an entry in "
        "HUB_DATASETS in captioning/data.py"
    )


# --------------------------------------------------------------------------- local sources

# (image_id, references, file_name) before images are resolved: resolving only the selected
# rows keeps max_samples=100 of a 120k-image json fast, and missing images outside the
# selection do not block it.
_Row = tuple[Any, list[str], str]


def _finish(
    rows: list[_Row],
    roots: list[Path],
    source: str,
    split: str,
    max_samples: int | None,
    shuffle: bool,
    seed: int,
    hint: str = "pass --images-dir with the folder that holds the images",
) -> CaptionDataset:
    if not rows:
        raise UserError(f"{source}: split {split!r} holds no captioned images")
    rows = _select(rows, key=lambda r: r[0], shuffle=shuffle, seed=seed, max_samples=max_samples)
    resolve = _Resolver(roots, source, hint)
    examples = [
        CaptionExample(image_id, refs, file_name, resolve(file_name))
        for image_id, refs, file_name in rows
    ]
    return CaptionDataset(examples, source=source, split=split)


def _select(items: list, *, key, shuffle: bool, seed: int, max_samples: int | None) -> list:
    if shuffle:
        # A hash of (seed, id) instead of random.shuffle: the order depends only on the ids,
        # not on the Python version or on where the rows sat in the file.
        items = sorted(items, key=lambda it: _seeded_hash(seed, key(it)))
    return items[:max_samples] if max_samples is not None else list(items)


def _seeded_hash(seed: int, value: Any) -> str:
    text = f"{seed}:{json.dumps(value, ensure_ascii=False)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Resolver:
    """Find each relative image name under the first root that has it."""

    def __init__(self, roots: list[Path], source: str, hint: str):
        self.roots = list(dict.fromkeys(roots))
        self.source = source
        self.hint = hint

    def __call__(self, rel: str) -> Path:
        for i, root in enumerate(self.roots):
            candidate = root / rel
            if candidate.is_file():
                if i:  # the next file is most likely in the same place
                    self.roots.insert(0, self.roots.pop(i))
                return candidate
        where = ", ".join(str(r) for r in self.roots) or "(no image folder found)"
        raise UserError(
            f"{self.source}: image {rel!r} not found (looked in {where}); {self.hint}"
        )


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def _coco_rows_from_json(
    json_path: Path, split: str, images_root: Path | None, anchor: Path | None = None
) -> tuple[list[_Row], list[Path]]:
    data = _read_json(json_path)
    if isinstance(data, list):
        raise UserError(
            f"{json_path}: a list, i.e. COCO results (predictions); expected caption "
            'annotations {"images": [...], "annotations": [...]}'
        )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise UserError(
            f'{json_path}: not COCO caption annotations (needs "images" and "annotations" lists)'
        )

    refs: dict[Any, list[str]] = {}
    file_names: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise UserError(f'{json_path}: images[{i}] lacks "id" or "file_name"')
        image_id = image["id"]
        if image_id in file_names:
            raise UserError(f"{json_path}: image id {image_id!r} appears twice in images")
        file_names[image_id] = str(image["file_name"])
        refs[image_id] = []
    blank = 0
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise UserError(f'{json_path}: annotations[{i}] lacks "image_id" or "caption"')
        if ann["image_id"] not in refs:
            raise UserError(
                f"{json_path}: annotations[{i}] refers to image_id {ann['image_id']!r}, "
                "which is not in images"
            )
        caption = ann["caption"]
        if not isinstance(caption, str):
            raise UserError(f"{json_path}: annotations[{i}] caption is not a string")
        if not caption.strip():
            blank += 1
            continue
        refs[ann["image_id"]].append(caption)
    if blank:
        log.warning("%s: skipped %d blank captions", json_path, blank)
    uncaptioned = sum(1 for caps in refs.values() if not caps)
    if uncaptioned:
        log.warning("%s: skipped %d images without captions", json_path, uncaptioned)
    rows = [(image_id, caps, file_names[image_id]) for image_id, caps in refs.items() if caps]

    match = re.fullmatch(r"captions_(.+)\.json", json_path.name)
    image_split = match.group(1) if match else split
    if images_root is not None:
        roots = [images_root, images_root / image_split]
    else:
        if anchor is None:
            parent = json_path.parent
            anchor = parent.parent if parent.name == "annotations" else parent
        roots = [anchor / "images", anchor / "images" / image_split, anchor / image_split, anchor]
    return rows, [r for r in roots if r.is_dir()]


def _metadata_file(folder: Path) -> Path | None:
    jsonl, csv_file = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file() and csv_file.is_file():
        raise UserError(f"{folder}: both metadata.jsonl and metadata.csv; keep one")
    if jsonl.is_file():
        return jsonl
    return csv_file if csv_file.is_file() else None


def _imagefolder_rows(root: Path, split: str) -> tuple[list[_Row], Path]:
    split_dirs = {
        d.name: d for d in sorted(root.iterdir()) if d.is_dir() and _metadata_file(d) is not None
    }
    if split_dirs:
        if split not in split_dirs:
            raise UserError(
                f"{root}: no split {split!r} (no {root / split / 'metadata.jsonl'} or .csv); "
                f"splits found: {', '.join(split_dirs)}"
            )
        folder = split_dirs[split]
    elif _metadata_file(root) is not None:
        # A flat folder is one split. HF imagefolder calls it "train"; its own name is also
        # accepted so "my_eval_set" can be evaluated as split "my_eval_set". Any other name
        # is refused rather than silently serving the same images under every split.
        if split not in ("train", root.name):
            raise UserError(
                f"{root}: a flat image folder (metadata at the top, no split subfolders) is "
                f"the single split 'train' (or {root.name!r}); got split {split!r}. For several "
                "splits use DIR/<split>/metadata.jsonl"
            )
        folder = root
    else:
        raise UserError(
            f"{root}: not a dataset folder: expected annotations/captions_<split>.json (COCO) "
            "or metadata.jsonl / metadata.csv (image folder)"
        )
    meta = _metadata_file(folder)
    assert meta is not None
    records = _read_jsonl(meta) if meta.suffix == ".jsonl" else _read_csv(meta)

    grouped: dict[str, list[str]] = {}
    for line, record in records:
        if "file_name" not in record:
            raise UserError(
                f"{meta}:{line}: no file_name column (columns: {', '.join(record) or 'none'})"
            )
        captions = _captions_of(record, meta, line)
        grouped.setdefault(str(record["file_name"]), []).extend(
            c for c in captions if c.strip()
        )
    rows = [(name, caps, name) for name, caps in grouped.items() if caps]
    if len(rows) < len(grouped):
        log.warning("%s: skipped %d images without captions", meta, len(grouped) - len(rows))
    return rows, folder


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}: invalid JSON at line {lineno} column {e.colno}: {e.msg}"
                ) from None
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {lineno} is not a JSON object")
            out.append((lineno, record))
    return out


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    out = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            for record in reader:
                out.append((reader.line_num, record))
        except csv.Error as e:
            raise UserError(f"{path}: bad CSV at line {reader.line_num}: {e}") from None
    return out


def _captions_of(record: dict, meta: Path, line: int) -> list[str]:
    if "captions" in record and record["captions"] not in (None, ""):
        value = record["captions"]
        if isinstance(value, str):  # CSV cells hold the list JSON-encoded
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{meta}: line {line}: captions is not a JSON list of strings ({e.msg})"
                ) from None
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise UserError(f"{meta}: line {line}: captions must be a list of strings")
        return value
    for column in ("caption", "text"):
        if column in record and record[column] is not None:
            if not isinstance(record[column], str):
                raise UserError(f"{meta}: line {line}: {column} must be a string")
            return [record[column]]
    raise UserError(
        f"{meta}: line {line}: no caption column (need caption, text or captions; "
        f"columns: {', '.join(record)})"
    )


# --------------------------------------------------------------------------- hub sources

_TRUE = {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().upper() in _TRUE
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_cached(repo_id: str) -> bool:
    """Whether ``datasets`` may find ``repo_id`` in a local cache (offline mode uses it)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub_cache = Path(
        os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub"
    ).expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    if (hub_cache / f"datasets--{repo_id.replace('/', '--')}").is_dir():
        return True
    prefix = repo_id.replace("/", "___")
    return datasets_cache.is_dir() and any(datasets_cache.glob(f"{prefix}*"))


def _unreachable(repo_id: str, why: str) -> UserError:
    return UserError(
        f"{repo_id}: the Hugging Face Hub is unreachable ({why}) and no cached copy was "
        "found. Point the dataset at a local copy instead: a COCO captions .json (with "
        "--images-dir), a folder with annotations/captions_<split>.json, or an image folder "
        "with metadata.jsonl/csv"
    )


def _is_connection_error(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        name = type(exc).__name__
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(
            word in name for word in ("Connect", "Offline", "LocalEntryNotFound", "Timeout")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _load_hub(
    repo_id: str,
    split: str,
    spec: HubSpec,
    *,
    max_samples: int | None,
    shuffle: bool,
    seed: int,
    images_dir: Path | None,
    streaming: bool,
) -> CaptionDataset:
    ours = [name for name, _ in spec.derive_splits] or list(spec.splits)
    if split not in ours:
        raise UserError(f"{repo_id}: no split {split!r}; splits: {', '.join(ours)}")
    if streaming:
        if spec.derive_splits:
            raise UserError(
                f"{repo_id}: its splits are cut here from the whole train split, which "
                "streaming cannot do; drop --streaming"
            )
        if shuffle:
            raise UserError("--streaming reads the first images in order; drop --shuffle")
        if max_samples is None:
            raise UserError("--streaming needs --max-samples (how many images to read)")
    if spec.needs_images_dir and images_dir is None:
        raise UserError(f"{repo_id}: {spec.needs_images_dir}")
    # Check before importing datasets or touching the network: offline runs must fail now.
    if _hub_offline() and not _hub_cached(repo_id):
        raise _unreachable(repo_id, "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")

    import datasets

    hub_split = "train" if spec.derive_splits else split
    try:
        ds = datasets.load_dataset(repo_id, split=hub_split, streaming=streaming)
    except Exception as e:
        if _is_connection_error(e):
            raise _unreachable(repo_id, f"{type(e).__name__}: {e}") from None
        raise
    if streaming:
        return _from_hf_stream(ds, spec, split, source=repo_id, max_samples=max_samples,
                               images_dir=images_dir)
    return _from_hf_dataset(ds, spec, split, source=repo_id, max_samples=max_samples,
                            shuffle=shuffle, seed=seed, images_dir=images_dir)


def _flatten_captions(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    out = []
    for item in value:
        if isinstance(item, dict):  # Karpathy-style {"raw": ..., "tokens": [...]}
            item = item.get("raw")
        if isinstance(item, str):
            out.append(item)
    return out


def _image_ref(value: Any) -> Any:
    """Normalise a datasets image cell (decode=False dict, path, bytes or PIL) for storage."""
    if isinstance(value, dict):
        return value.get("bytes") or (Path(value["path"]) if value.get("path") else None)
    if isinstance(value, str):
        return Path(value)
    return value


def _content_key(value: Any) -> str:
    ref = _image_ref(value)
    if isinstance(ref, Path):
        data = str(ref).encode("utf-8")
    elif isinstance(ref, Image.Image):
        data = ref.tobytes()
    else:
        data = bytes(ref or b"")
    return hashlib.sha1(data).hexdigest()[:16]


class _HFImage:
    """Picklable handle to one image cell of a datasets.Dataset, fetched on demand."""

    def __init__(self, ds: Any, row: int, column: str):
        self.ds, self.row, self.column = ds, row, column

    def __call__(self) -> Any:
        return _image_ref(self.ds[self.row][self.column])


def _undecoded(ds: Any, spec: HubSpec) -> Any:
    """The dataset with its image column left encoded (no decoding at load time)."""
    import datasets

    if spec.image and isinstance(ds.features.get(spec.image), datasets.Image):
        return ds.cast_column(spec.image, datasets.Image(decode=False))
    return ds


def _check_columns(columns: Iterable[str], spec: HubSpec, source: str) -> None:
    columns = list(columns)
    needed = [spec.captions] + ([spec.image] if spec.image else [])
    needed += list(spec.file_name) if spec.needs_images_dir else []
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(
            f"{source}: expected columns {', '.join(missing)} (per HUB_DATASETS in "
            f"captioning/data.py); the dataset has {', '.join(columns)}"
        )


def _group_column(columns: Iterable[str], spec: HubSpec) -> str | None:
    columns = set(columns)
    for col in spec.group_by:
        if col == BY_IMAGE_CONTENT and spec.image:
            return col
        if col in columns:
            return col
    return None


def _from_hf_dataset(
    ds: Any,
    spec: HubSpec,
    split: str,
    *,
    source: str,
    max_samples: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    images_dir: Path | None = None,
) -> CaptionDataset:
    """Turn one hub split (a ``datasets.Dataset``) into a CaptionDataset per ``spec``.

    Rows are grouped into images by ``spec.group_by``; with ``spec.derive_splits`` the
    images are cut into splits by a seeded hash of their key and ``split`` is kept.
    """
    _check_columns(ds.column_names, spec, source)
    ds = _undecoded(ds, spec)
    group_col = _group_column(ds.column_names, spec)
    wanted = [spec.captions, *(c for c in spec.file_name if c in ds.column_names)]
    if spec.image_id and spec.image_id in ds.column_names:
        wanted.append(spec.image_id)
    if group_col and group_col != BY_IMAGE_CONTENT:
        wanted.append(group_col)
    table = ds.select_columns(list(dict.fromkeys(wanted))).to_dict()
    n_rows = len(ds)
    if group_col == BY_IMAGE_CONTENT:
        keys = [_content_key(cell[spec.image]) for cell in ds.select_columns([spec.image])]
    elif group_col:
        keys = table[group_col]
    else:
        keys = list(range(n_rows))

    groups: dict[Any, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)

    items = list(groups.items())
    if spec.derive_splits:
        items = _derived_split(items, spec, split)
    items = _select(items, key=lambda kv: kv[0], shuffle=shuffle, seed=seed,
                    max_samples=max_samples)

    examples = []
    for key, rows in items:
        refs = [c for r in rows for c in _flatten_captions(table[spec.captions][r]) if c.strip()]
        if not refs:
            continue
        first = rows[0]
        image_id = table[spec.image_id][first] if spec.image_id in table else key
        parts = [str(table[c][first]) for c in spec.file_name if c in table]
        file_name = "/".join(p.strip("/") for p in parts) if parts else None
        if spec.image:
            image_source: Any = _HFImage(ds, first, spec.image)
        else:
            assert images_dir is not None and file_name is not None
            image_source = images_dir / file_name
        examples.append(CaptionExample(image_id, refs, file_name or str(image_id), image_source))
    return _hub_dataset(examples, source, split, images_dir if not spec.image else None)


def _derived_split(items: list, spec: HubSpec, split: str) -> list:
    """Cut (key, rows) items into spec.derive_splits by a seeded hash of the key."""
    order = sorted(range(len(items)), key=lambda i: _seeded_hash(spec.split_seed, items[i][0]))
    n, start, total = len(items), 0, 0.0
    for name, fraction in spec.derive_splits:
        total += fraction
        end = n if name == spec.derive_splits[-1][0] else round(total * n)
        if name == split:
            chosen = sorted(order[start:end])  # keep the dataset's own order inside a split
            return [items[i] for i in chosen]
        start = end
    raise UserError(f"no split {split!r}")  # unreachable: checked by the caller


def _from_hf_stream(
    rows: Iterable[dict],
    spec: HubSpec,
    split: str,
    *,
    source: str,
    max_samples: int,
    images_dir: Path | None = None,
) -> CaptionDataset:
    """Read the first ``max_samples`` images of a streamed split (rows of one image are
    expected to be consecutive, as in the hub's files)."""
    features = getattr(rows, "features", None)
    if features is not None and spec.image:
        import datasets

        if isinstance(features.get(spec.image), datasets.Image):
            rows = rows.cast_column(spec.image, datasets.Image(decode=False))
    groups: dict[Any, dict] = {}
    for row in rows:
        group_col = _group_column(row.keys(), spec)
        if not groups:
            _check_columns(row.keys(), spec, source)
        if group_col == BY_IMAGE_CONTENT:
            key = _content_key(row[spec.image])
        elif group_col:
            key = row[group_col]
        else:
            key = len(groups)
        if key not in groups:
            if len(groups) == max_samples:
                break
            groups[key] = {"first": row, "refs": []}
        groups[key]["refs"].extend(c for c in _flatten_captions(row[spec.captions]) if c.strip())
    examples = []
    for key, group in groups.items():
        first = group["first"]
        if not group["refs"]:
            continue
        image_id = first[spec.image_id] if spec.image_id and spec.image_id in first else key
        parts = [str(first[c]) for c in spec.file_name if c in first]
        file_name = "/".join(p.strip("/") for p in parts) if parts else None
        if spec.image:
            image_source: Any = _image_ref(first[spec.image])
        else:
            assert images_dir is not None and file_name is not None
            image_source = images_dir / file_name
        examples.append(CaptionExample(image_id, group["refs"], file_name or str(image_id),
                                       image_source))
    return _hub_dataset(examples, source, split, images_dir if not spec.image else None)


def _hub_dataset(
    examples: list[CaptionExample], source: str, split: str, images_dir: Path | None
) -> CaptionDataset:
    if not examples:
        raise UserError(f"{source}: split {split!r} holds no captioned images")
    if images_dir is not None:
        for ex in examples:
            if not ex.image_source.is_file():
                raise UserError(
                    f"{source}: image {ex.file_name!r} not found under {images_dir}; pass "
                    "--images-dir with the folder holding COCO's train2014/ and val2014/"
                )
    return CaptionDataset(examples, source=source, split=split)
