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

Modules: ``examples`` (CaptionExample, CaptionDataset, caption transforms), ``local`` (COCO
json and image folders), ``hub`` (the hub table and ``datasets`` rows).
"""

from __future__ import annotations

import os
from pathlib import Path

from captioning.data.examples import (
    CAPTION_TRANSFORMS,
    CaptionDataset,
    CaptionExample,
    caption_transform,
    linguistic_errors,
)
from captioning.data.hub import BY_IMAGE_CONTENT, HUB_DATASETS, HubSpec, load_hub
from captioning.data.local import coco_rows_from_json, finish, imagefolder_rows
from captioning.errors import UserError

__all__ = [
    "BY_IMAGE_CONTENT",
    "CAPTION_TRANSFORMS",
    "HUB_DATASETS",
    "CaptionDataset",
    "CaptionExample",
    "HubSpec",
    "caption_transform",
    "linguistic_errors",
    "load_captions",
]


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
        rows, roots, scenes = coco_rows_from_json(path, split, images_root)
        return finish(rows, roots, source, split, max_samples, shuffle, seed, scenes=scenes)
    if path.is_dir():
        if (path / "annotations").is_dir():
            json_path = path / "annotations" / f"captions_{split}.json"
            if not json_path.is_file() and not (json_path.exists() or json_path.is_symlink()):
                found = sorted(
                    p.name[len("captions_") : -len(".json")]
                    for p in (path / "annotations").glob("captions_*.json")
                )
                raise UserError(
                    f"{source}: no annotations/captions_{split}.json; splits found: "
                    f"{', '.join(found) or 'none'}"
                )
            rows, roots, scenes = coco_rows_from_json(json_path, split, images_root, anchor=path)
            return finish(rows, roots, source, split, max_samples, shuffle, seed, scenes=scenes)
        if images_root is not None:
            raise UserError(
                f"--images-dir applies to COCO .json sources; {source} is an image folder "
                "whose metadata file names are relative to it"
            )
        rows, root = imagefolder_rows(path, split)
        hint = f"file_name in the metadata file is relative to {root}"
        return finish(rows, [root], source, split, max_samples, shuffle, seed, hint)
    if source in HUB_DATASETS:
        return load_hub(source, split, HUB_DATASETS[source], max_samples=max_samples,
                         shuffle=shuffle, seed=seed, images_dir=images_root, streaming=streaming)
    raise UserError(
        f"{source}: no such file or folder, and not a known hub dataset "
        f"(known: {', '.join(sorted(HUB_DATASETS))}). Use a local copy: a COCO captions "
        ".json (with --images-dir), a folder with annotations/captions_<split>.json, or an "
        "image folder with metadata.jsonl/csv; another hub id needs an entry in "
        "HUB_DATASETS in captioning/data/hub.py"
    )
