"""Regenerate the Space's example images (small, deterministic, committed).

    python space/examples/make_examples.py

Three scenes from the synthetic shapes set (what the demo models are trained on) and
three simple drawn pictures, each a few KB.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from synthetic import shapes

HERE = Path(__file__).resolve().parent
SHAPES_SIZE = 128


def shapes_scenes(n: int = 3, seed: int = 7) -> list[tuple[str, Image.Image]]:
    """The first ``n`` scenes with 2+ shapes and no noise background (noise does not compress)."""
    rng = random.Random(f"space-examples/{seed}")
    out = []
    while len(out) < n:
        scene = shapes.sample_scene(rng, SHAPES_SIZE)
        if scene["background"] == "noise" or len(scene["shapes"]) < 2:
            continue
        out.append((f"shapes_{len(out) + 1}.png", shapes.render(scene, SHAPES_SIZE)))
    return out


def sunset(w: int = 192, h: int = 128) -> Image.Image:
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    horizon = int(h * 0.62)
    for y in range(horizon):  # sky: orange at the horizon to purple at the top
        t = y / horizon
        draw.line([(0, y), (w, y)], fill=(int(90 + 160 * t), int(40 + 90 * t), int(120 - 60 * t)))
    draw.ellipse([w * 0.42, horizon - 26, w * 0.42 + 40, horizon + 14], fill=(255, 210, 90))
    for y in range(horizon, h):  # sea with the sun's reflection
        t = (y - horizon) / (h - horizon)
        draw.line([(0, y), (w, y)], fill=(int(40 - 20 * t), int(50 + 10 * t), int(110 + 30 * t)))
        if y % 4 == 0:
            half = int(22 * (1 - t)) + 4
            draw.line([(w * 0.42 + 20 - half, y), (w * 0.42 + 20 + half, y)], fill=(240, 170, 80))
    return img


def house(w: int = 160, h: int = 128) -> Image.Image:
    img = Image.new("RGB", (w, h), (135, 195, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 92, w, h], fill=(70, 150, 60))  # grass
    draw.rectangle([40, 58, 104, 100], fill=(230, 215, 180))  # walls
    draw.polygon([(32, 60), (72, 28), (112, 60)], fill=(180, 50, 40))  # roof
    draw.rectangle([64, 76, 78, 100], fill=(110, 70, 40))  # door
    for x in (46, 86):
        draw.rectangle([x, 66, x + 12, 78], fill=(250, 250, 255), outline=(90, 90, 90))
    draw.rectangle([128, 72, 134, 100], fill=(100, 70, 40))  # tree
    draw.ellipse([114, 44, 148, 80], fill=(40, 120, 50))
    draw.ellipse([12, 10, 34, 32], fill=(255, 230, 80))  # sun
    return img


def fruit(w: int = 160, h: int = 128) -> Image.Image:
    img = Image.new("RGB", (w, h), (235, 228, 215))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 86, w, h], fill=(150, 100, 60))  # table
    draw.ellipse([50, 56, 86, 92], fill=(200, 30, 40))  # apple
    draw.line([(68, 58), (70, 48)], fill=(90, 60, 30), width=3)
    draw.ellipse([84, 58, 118, 92], fill=(245, 140, 20))  # orange
    draw.chord([20, 40, 100, 110], 20, 160, fill=(245, 215, 60))  # banana
    draw.pieslice([118, 62, 150, 94], 0, 360, fill=(120, 40, 120))  # plum
    return img


def main() -> int:
    pictures = shapes_scenes() + [("sunset.jpg", sunset()), ("house.png", house()), ("fruit.png", fruit())]
    for name, img in pictures:
        path = HERE / name
        if path.suffix == ".jpg":
            img.save(path, quality=85, optimize=True)
        else:
            img.save(path, optimize=True)
        print(f"{path} {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
