"""Local caption datasets: COCO caption annotations (a .json, or a folder holding
``annotations/captions_<split>.json``) and image folders (``metadata.jsonl`` / ``.csv``).
Each reader returns rows; :func:`finish` selects them and resolves their image files."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

from captioning.data.examples import CaptionDataset, CaptionExample, select
from captioning.errors import UserError
from captioning.files import parse_json, read_json_file, read_text_file

log = logging.getLogger(__name__)

# (image_id, references, file_name) before images are resolved: resolving only the selected
# rows keeps max_samples=100 of a 120k-image json fast, and missing images outside the
# selection do not block it.
_Row = tuple[Any, list[str], str]


def finish(
    rows: list[_Row],
    roots: list[Path],
    source: str,
    split: str,
    max_samples: int | None,
    shuffle: bool,
    seed: int,
    hint: str = "pass --images-dir with the folder that holds the images",
    scenes: dict[Any, list[dict]] | None = None,
) -> CaptionDataset:
    if not rows:
        raise UserError(f"{source}: split {split!r} holds no captioned images")
    rows = select(rows, key=lambda r: r[0], shuffle=shuffle, seed=seed, max_samples=max_samples)
    resolve = _Resolver(roots, source, hint)
    examples = [
        CaptionExample(image_id, refs, file_name, resolve(file_name), scene=(scenes or {}).get(image_id))
        for image_id, refs, file_name in rows
    ]
    return CaptionDataset(examples, source=source, split=split)


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


def coco_rows_from_json(
    json_path: Path, split: str, images_root: Path | None, anchor: Path | None = None
) -> tuple[list[_Row], list[Path], dict[Any, list[dict]] | None]:
    """(rows, the folders images may be in, {image_id: scene} when every image records the
    objects it shows (the shapes set's ``shapes``), else None)."""
    data = read_json_file(json_path)
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
    scenes = {im["id"]: im["shapes"] for im in data["images"]} \
        if all(isinstance(im.get("shapes"), list) for im in data["images"]) else None
    return rows, [r for r in roots if r.is_dir()], scenes


def _metadata_file(folder: Path) -> Path | None:
    jsonl, csv_file = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file() and csv_file.is_file():
        raise UserError(f"{folder}: both metadata.jsonl and metadata.csv; keep one")
    if jsonl.is_file():
        return jsonl
    return csv_file if csv_file.is_file() else None


def imagefolder_rows(root: Path, split: str) -> tuple[list[_Row], Path]:
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


# Both metadata formats are read through captioning.files: a BOM is accepted in each (as in
# COCO json), a FIFO, a link loop or text that is not UTF-8 is one line naming the file.
def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    out = []
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}: line {lineno}")
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {lineno} is not a JSON object")
        out.append((lineno, record))
    return out


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    out = []
    with io.StringIO(read_text_file(path), newline="") as fh:
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
