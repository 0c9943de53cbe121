"""Hub caption datasets through ``datasets.load_dataset``: the one table of known ids and
their column mappings (:data:`HUB_DATASETS`), and the grouping of rows into images."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from captioning.data.examples import CaptionDataset, CaptionExample, seeded_hash, select
from captioning.errors import UserError

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


def _cached(repo_id: str) -> bool:
    """Whether ``datasets`` may find ``repo_id`` in a local cache (offline mode uses it): the
    hub cache holds its repo, or the datasets cache a prepared copy (the names ``datasets``
    gives its cache folders)."""
    import datasets.config
    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir():
        return True
    prepared = Path(datasets.config.HF_DATASETS_CACHE)
    return prepared.is_dir() and any(prepared.glob(f"{repo_id.replace('/', '___')}*"))


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


def load_hub(
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
    import datasets

    # datasets.config.HF_HUB_OFFLINE answers both HF_DATASETS_OFFLINE and HF_HUB_OFFLINE.
    # Check before touching the network: offline runs must fail now, not after retries.
    if datasets.config.HF_HUB_OFFLINE and not _cached(repo_id):
        raise _unreachable(repo_id, "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")

    hub_split = "train" if spec.derive_splits else split
    try:
        ds = datasets.load_dataset(repo_id, split=hub_split, streaming=streaming)
    except Exception as e:
        if _is_connection_error(e):
            raise _unreachable(repo_id, f"{type(e).__name__}: {e}") from None
        raise
    if streaming:
        return from_hf_stream(ds, spec, split, source=repo_id, max_samples=max_samples,
                               images_dir=images_dir)
    return from_hf_dataset(ds, spec, split, source=repo_id, max_samples=max_samples,
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
            f"captioning/data/hub.py); the dataset has {', '.join(columns)}"
        )


def _group_column(columns: Iterable[str], spec: HubSpec) -> str | None:
    columns = set(columns)
    for col in spec.group_by:
        if col == BY_IMAGE_CONTENT and spec.image:
            return col
        if col in columns:
            return col
    return None


def from_hf_dataset(
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
    items = select(items, key=lambda kv: kv[0], shuffle=shuffle, seed=seed,
                    max_samples=max_samples)

    examples = []
    for key, rows in items:
        refs = [c for r in rows for c in _flatten_captions(table[spec.captions][r]) if c.strip()]
        if not refs:
            continue
        first = rows[0]
        cells = {column: values[first] for column, values in table.items()}
        examples.append(_example(spec, key, refs, cells, _HFImage(ds, first, spec.image) if spec.image else None,
                                 images_dir))
    return _hub_dataset(examples, source, split, images_dir if not spec.image else None)


def _derived_split(items: list, spec: HubSpec, split: str) -> list:
    """Cut (key, rows) items into spec.derive_splits by a seeded hash of the key."""
    order = sorted(range(len(items)), key=lambda i: seeded_hash(spec.split_seed, items[i][0]))
    n, start, total = len(items), 0, 0.0
    for name, fraction in spec.derive_splits:
        total += fraction
        end = n if name == spec.derive_splits[-1][0] else round(total * n)
        if name == split:
            chosen = sorted(order[start:end])  # keep the dataset's own order inside a split
            return [items[i] for i in chosen]
        start = end
    raise UserError(f"no split {split!r}")  # unreachable: checked by the caller


def from_hf_stream(
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
        examples.append(_example(spec, key, group["refs"], first,
                                 _image_ref(first[spec.image]) if spec.image else None, images_dir))
    return _hub_dataset(examples, source, split, images_dir if not spec.image else None)


def _example(spec: HubSpec, key: Any, refs: list[str], first: Mapping[str, Any], image: Any,
             images_dir: Path | None) -> CaptionExample:
    """The example of one image from its group's first row (``first``: column -> value): its
    id, file name, and ``image`` (a handle to its pixels) or, for a spec without image
    column, its file under ``images_dir``."""
    image_id = first[spec.image_id] if spec.image_id and spec.image_id in first else key
    parts = [str(first[c]) for c in spec.file_name if c in first]
    file_name = "/".join(p.strip("/") for p in parts) if parts else None
    if not spec.image:
        assert images_dir is not None and file_name is not None  # _check_columns made sure
        image = images_dir / file_name
    return CaptionExample(image_id, refs, file_name or str(image_id), image)


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
