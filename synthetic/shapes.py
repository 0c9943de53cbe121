"""Deterministic synthetic captioning dataset: coloured shapes on a 3x3 grid.

Run it::

    python -m synthetic.shapes --out DIR [--seed 0] [--train 1000] [--val 100] [--test 100] [--size 64]

(``python -m captioning.shapes`` runs the same command.)

Writes COCO caption files ``DIR/annotations/captions_{train,val,test}.json`` and the
PNGs under ``DIR/images/<split>/`` (``file_name`` in the JSON is relative to
``DIR/images``). Every image holds 1-3 non-overlapping shapes, each in its own grid
cell, and gets 5 different captions from a small grammar that are always true to
the picture (see :func:`describe`).

Each split draws from its own random stream, derived from ``(seed, split)``, so
``--train`` never changes val/test; the same settings give byte-identical files.
A split whose annotation file already matches the requested settings is skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import random
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from captioning.cli import ArgumentParser, run_command
from captioning.errors import UserError
from captioning.files import output_lock, read_json_file, write_atomic
from captioning.options import add_options, option, option_values

# Bump whenever any output byte could change for the same settings: it is part of
# the "already generated?" check, so old outputs get regenerated instead of reused.
GENERATOR_VERSION = 1

SPLITS = ("train", "val", "test")
# Fixed id blocks (instead of "val continues after train") keep val/test JSON
# byte-identical when --train changes, while ids stay unique across splits.
ID_BLOCK = 10_000_000
MAX_COUNT = ID_BLOCK - 1
MIN_SIZE = 32
#: larger scenes would only be upscaled shapes; and each image is drawn whole in memory (with a
#: float noise layer), so a side of 10^6 would ask for terabytes before the OOM killer stepped in
MAX_SIZE = 4096
GRID = 3

# Saturated, far-apart colours; backgrounds are all mid/light greys, so no shape
# colour can be confused with the background even after downscaling.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
}
# No hexagon: at 32 px it is indistinguishable from a circle.
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
SIZES = ("small", "large")
# Radius as a fraction of the image side: diameters 20% and 30%, so both survive
# a downscale to 32 px and a large shape still fits inside one grid cell (33%).
RADIUS_FRACTION = {"small": 0.10, "large": 0.15}
BACKGROUNDS = ("plain", "noise", "stripes", "checks")
# Grey levels for backgrounds; texture amplitude is small so it never reads as a shape.
_BG_LEVELS = (150, 165, 180, 195)
_TEXTURE_AMPLITUDE = 12

COUNT_WORDS = ("one", "two", "three")
_SPLIT_KEY = {"train": 0, "val": 1, "test": 2}


# ----------------------------------------------------------------------------- captions

def _np(shape: dict, sized: bool) -> str:
    words = f"{shape['size']} {shape['color']}" if sized else shape["color"]
    article = "an" if words[0] in "aeiou" else "a"  # "an orange square", "a large orange square"
    return f"{article} {words} {shape['shape']}"


def relation(a: dict, b: dict) -> str:
    """Where ``a`` is relative to ``b``: vertical relation wins when rows differ.

    Rows grow downwards. Shapes never share a cell, so one of the two axes differs.
    """
    if a["row"] < b["row"]:
        return "above"
    if a["row"] > b["row"]:
        return "below"
    return "left of" if a["col"] < b["col"] else "right of"


def _chain(shapes: Sequence[dict], sized: bool) -> str:
    parts = [_np(shapes[0], sized)]
    for prev, cur in zip(shapes, shapes[1:]):
        parts.append(relation(prev, cur))
        parts.append(_np(cur, sized))
    return " ".join(parts)


def _listing(shapes: Sequence[dict], sized: bool) -> str:
    nps = [_np(s, sized) for s in shapes]
    if len(nps) == 1:
        return nps[0]
    return ", ".join(nps[:-1]) + " and " + nps[-1]


def canonical_order(shapes: Iterable[dict]) -> list[dict]:
    """Shapes in reading order: top-to-bottom, then left-to-right."""
    return sorted(shapes, key=lambda s: (s["row"], s["col"]))


def describe(scene: dict) -> list[str]:
    """Five different captions, all true to ``scene`` (an image entry with ``shapes``).

    With shapes ``s1..sn`` in reading order (:func:`canonical_order`) and ``rel``
    from :func:`relation` (between consecutive shapes):

    0. canonical, with sizes:  ``a small red circle above a large blue square``
    1. count + list:           ``two shapes: a red circle and a blue square``
    2. there is + chain:       ``there is a red circle above a blue square``
    3. reversed chain:         ``a blue square below a red circle``
    4. picture + list, sized:  ``a picture of a small red circle and a large blue square``

    Three shapes chain pairwise (``A above B left of C``) and list as ``A, B and C``.
    """
    shapes = canonical_order(scene["shapes"])
    n = len(shapes)
    if not 1 <= n <= len(COUNT_WORDS):
        raise ValueError(f"a scene holds 1 to {len(COUNT_WORDS)} shapes, got {n}")
    noun = "shape" if n == 1 else "shapes"
    return [
        _chain(shapes, sized=True),
        f"{COUNT_WORDS[n - 1]} {noun}: {_listing(shapes, sized=False)}",
        f"there is {_chain(shapes, sized=False)}",
        _chain(shapes[::-1], sized=False),
        f"a picture of {_listing(shapes, sized=True)}",
    ]


def vocabulary() -> list[str]:
    """Every word (and the punctuation tokens ``:`` and ``,``) captions can contain, sorted."""
    words = {"a", "an", "there", "is", "picture", "of", "and", "above", "below",
             "left", "right", "shape", "shapes", ":", ","}
    words.update(COLORS, SHAPES, SIZES, COUNT_WORDS)
    return sorted(words)


def tokenize(caption: str) -> list[str]:
    """Split a caption into the tokens of :func:`vocabulary` (``:`` and ``,`` separate)."""
    return re.findall(r"[a-z]+|[:,]", caption)


# ----------------------------------------------------------------------------- scenes

def _rng(seed: int, split: str) -> random.Random:
    # String seeds go through SHA-512 in CPython, stable across runs and versions,
    # unlike numpy Generator streams which may change between numpy releases. The seed string
    # names the module's old home (captioning.shapes) on purpose: changing it changes every image.
    return random.Random(f"captioning.shapes/v{GENERATOR_VERSION}/{seed}/{split}")


def sample_scene(rng: random.Random, size: int) -> dict:
    """Draw one scene description (shapes in reading order plus background) from ``rng``."""
    cell = size / GRID
    n = rng.randint(1, 3)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    shapes = []
    for idx in cells:
        row, col = divmod(idx, GRID)
        kind = rng.choice(SHAPES)
        color = rng.choice(tuple(COLORS))
        size_name = rng.choice(SIZES)
        r = max(2, round(RADIUS_FRACTION[size_name] * size))
        # Jitter only as far as keeps the shape inside its cell, so shapes never
        # overlap and row/col relations stay exact.
        jitter = max(0, int(cell / 2 - r) - 1)
        x = int((col + 0.5) * cell) + rng.randint(-jitter, jitter)
        y = int((row + 0.5) * cell) + rng.randint(-jitter, jitter)
        shapes.append({"shape": kind, "color": color, "size": size_name,
                       "row": row, "col": col, "x": x, "y": y, "r": r})
    background = rng.choice(BACKGROUNDS)
    level = rng.choice(_BG_LEVELS)
    return {"shapes": shapes, "background": background, "_level": level,
            "_noise_seed": rng.getrandbits(64)}


def _background(kind: str, level: int, size: int, noise_seed: int) -> Image.Image:
    amp = _TEXTURE_AMPLITUDE
    if kind == "plain":
        return Image.new("RGB", (size, size), (level,) * 3)
    if kind == "noise":
        raw = random.Random(noise_seed).randbytes(size * size)
        grey = np.frombuffer(raw, dtype=np.uint8).astype(np.int16) % (2 * amp + 1)
        grey = (grey - amp + level).astype(np.uint8).reshape(size, size)
    else:
        yy, xx = np.mgrid[0:size, 0:size]
        band = max(2, size // 16)
        if kind == "stripes":
            on = ((xx + yy) // band) % 2
        else:  # checks
            on = ((xx // band) + (yy // band)) % 2
        grey = np.where(on == 1, level + amp, level - amp).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def _polygon(x: int, y: int, r: float, n: int, start_deg: float, inner: float | None = None):
    pts = []
    steps = n * 2 if inner else n
    for i in range(steps):
        rad = r if (inner is None or i % 2 == 0) else r * inner
        ang = np.deg2rad(start_deg + 360.0 * i / steps)
        pts.append((x + rad * np.cos(ang), y + rad * np.sin(ang)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, s: dict) -> None:
    """Draw one shape, filled with its exact colour, inside the circle (x, y, r)."""
    x, y, r, fill = s["x"], s["y"], s["r"], COLORS[s["color"]]
    kind = s["shape"]
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "square":
        h = round(0.9 * r)  # a full-r square looks much bigger than a full-r circle
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif kind == "triangle":
        # Centroid at (x, y), so the recorded centre is always inside the shape.
        draw.polygon(_polygon(x, y, r, 3, -90), fill=fill)
    elif kind == "diamond":
        draw.polygon([(x, y - r), (x + 0.8 * r, y), (x, y + r), (x - 0.8 * r, y)], fill=fill)
    elif kind == "cross":
        w = max(1, round(r / 3))
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(x, y, r, 5, -90, inner=0.5), fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def render(scene: dict, size: int) -> Image.Image:
    """The picture of a scene from :func:`sample_scene` (RGB, ``size`` x ``size``)."""
    img = _background(scene["background"], scene["_level"], size, scene["_noise_seed"])
    draw = ImageDraw.Draw(img)
    for s in scene["shapes"]:
        draw_shape(draw, s)
    return img


# ----------------------------------------------------------------------------- files

def _info(split: str, seed: int, size: int, count: int) -> dict:
    # Only this split's own settings: other splits' counts must not change its bytes. "generator"
    # keeps the old module name (captioning.shapes): sets written before the move stay up to date.
    return {"description": "synthetic shapes captions (captioning.shapes)",
            "generator": "captioning.shapes", "version": GENERATOR_VERSION,
            "split": split, "seed": seed, "size": size, "count": count}


def _up_to_date(ann_path: pathlib.Path, images_dir: pathlib.Path, info: dict) -> bool:
    try:
        data = read_json_file(ann_path)
    except UserError:  # unreadable: written again
        return False
    if not isinstance(data, dict) or data.get("info") != info or len(data.get("images", ())) != info["count"]:
        return False
    return all((images_dir / im["file_name"]).is_file() for im in data["images"])


def _generate_split(out: pathlib.Path, split: str, seed: int, count: int, size: int) -> None:
    rng = _rng(seed, split)
    split_dir = out / "images" / split
    split_dir.mkdir(parents=True, exist_ok=True)
    base_id = _SPLIT_KEY[split] * ID_BLOCK
    images, annotations, wanted = [], [], set()
    for i in range(count):
        scene = sample_scene(rng, size)
        image_id = base_id + i + 1
        name = f"{i:06d}.png"
        wanted.add(name)
        buf = io.BytesIO()
        render(scene, size).save(buf, format="PNG")
        write_atomic(split_dir / name, buf.getvalue())
        images.append({"id": image_id, "file_name": f"{split}/{name}",
                       "width": size, "height": size,
                       "shapes": scene["shapes"], "background": scene["background"]})
        for k, caption in enumerate(describe(scene)):
            # image_id * 10 + k: unique across splits and stable when counts change.
            annotations.append({"image_id": image_id, "caption": caption, "id": image_id * 10 + k})
    # Images left over from an earlier, larger run would be orphans nobody references.
    for old in split_dir.glob("*.png"):
        if re.fullmatch(r"\d{6,}\.png", old.name) and old.name not in wanted:
            old.unlink()
    data = {"info": _info(split, seed, size, count), "licenses": [],
            "images": images, "annotations": annotations}
    # Written last, so a present annotation file always means its images are complete.
    write_atomic(out / "annotations" / f"captions_{split}.json",
                  json.dumps(data, separators=(",", ":")).encode())


def _check_args(seed: int, counts: dict[str, int], size: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be an integer >= 0 (got {seed!r})")
    for flag, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_COUNT:
            raise UserError(f"--{flag} must be an integer from 0 to {MAX_COUNT} (got {n!r})")
    if not any(counts.values()):
        raise UserError(f"{', '.join('--' + f for f in counts)} are all 0: nothing to write; ask for at least one "
                        "image")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels (got {size!r})")


def generate(out_dir, *, seed: int = 0, n_train: int = 1000, n_val: int = 100,
             n_test: int = 100, size: int = 64) -> pathlib.Path:
    """Write the dataset under ``out_dir`` and return it as a :class:`pathlib.Path`.

    Splits whose annotation file already matches (seed, size, count, generator
    version) with all images present are left untouched. Raises :class:`UserError`
    for bad arguments (the message names the CLI flag) or an unusable ``out_dir``.
    """
    return _generate(out_dir, seed, {"train": n_train, "val": n_val, "test": n_test}, size)[0]


def _generate(out_dir, seed: int, counts: dict[str, int], size: int) -> tuple[pathlib.Path, list[str]]:
    _check_args(seed, counts, size)
    skipped = []
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory (it is created if missing)")
    try:
        with output_lock(out, "--out"):
            (out / "annotations").mkdir(parents=True, exist_ok=True)
            for split, count in counts.items():
                info = _info(split, seed, size, count)
                if _up_to_date(out / "annotations" / f"captions_{split}.json", out / "images", info):
                    skipped.append(split)
                else:
                    _generate_split(out, split, seed, count, size)
    except PermissionError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror}); pick a writable directory") from exc
    return out, skipped


@dataclass
class ShapesOptions:
    """What ``python -m synthetic.shapes`` writes; its flags are these fields (captioning.options)."""

    out: str = option(help="output directory")
    seed: int = option(0, help="random seed (>= 0)")
    train: int = option(1000, help="number of train images")
    val: int = option(100, help="number of val images")
    test: int = option(100, help="number of test images")
    size: int = option(64, help=f"image side in pixels ({MIN_SIZE} to {MAX_SIZE})")

    def __post_init__(self):
        _check_args(self.seed, self.counts, self.size)

    @property
    def counts(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 2 on a user mistake (one line on stderr)."""
    parser = ArgumentParser(prog="python -m synthetic.shapes",
                            description="Write the synthetic shapes captioning dataset (COCO format).")
    add_options(parser, ShapesOptions)

    def run(args: argparse.Namespace) -> None:
        start = time.perf_counter()
        o = ShapesOptions(**option_values(ShapesOptions, args))
        out, skipped = _generate(o.out, o.seed, o.counts, o.size)
        print(f"wrote {o.train} train, {o.val} val, {o.test} test images "
              f"({o.size} px, seed {o.seed}, 5 captions each) to {out} "
              f"in {time.perf_counter() - start:.1f}s"
              + (f" (already up to date: {', '.join(skipped)})" if skipped else ""))

    return run_command(parser, argv, run)


if __name__ == "__main__":
    sys.exit(main())
