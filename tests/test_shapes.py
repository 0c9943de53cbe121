"""The synthetic shapes dataset: layout, determinism, and captions true to the pixels."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from synthetic import shapes

SPLITS = ("train", "val", "test")
NP_RE = re.compile(rf"\ban? (?:(small|large) )?({'|'.join(shapes.COLORS)}) ({'|'.join(shapes.SHAPES)})\b")
REL_RE = re.compile(r" (above|below|left of|right of) ")
COUNT = {"one": 1, "two": 2, "three": 3}


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{split}.json").read_text())


def _captions(data: dict) -> dict:
    out = {}
    for ann in data["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


def _expected_relation(a: dict, b: dict) -> str:
    # Written independently of the module: rows grow downwards, vertical wins.
    if a["row"] != b["row"]:
        return "above" if a["row"] < b["row"] else "below"
    return "left of" if a["col"] < b["col"] else "right of"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    shapes.generate(out, seed=3, n_train=40, n_val=10, n_test=10, size=64)
    return out


def test_layout_and_ids(dataset):
    image_ids, ann_ids = [], []
    for split in SPLITS:
        data = _load(dataset, split)
        assert data["info"]["seed"] == 3 and data["info"]["size"] == 64
        assert data["info"]["version"] == shapes.GENERATOR_VERSION
        assert len(data["images"]) == {"train": 40, "val": 10, "test": 10}[split]
        for im in data["images"]:
            assert im["file_name"].startswith(f"{split}/") and im["file_name"].endswith(".png")
            with Image.open(dataset / "images" / im["file_name"]) as img:
                assert img.size == (im["width"], im["height"]) == (64, 64)
            assert im["background"] in shapes.BACKGROUNDS
            assert 1 <= len(im["shapes"]) <= 3
        image_ids += [im["id"] for im in data["images"]]
        ann_ids += [a["id"] for a in data["annotations"]]
        assert {a["image_id"] for a in data["annotations"]} == {im["id"] for im in data["images"]}
    assert len(set(image_ids)) == len(image_ids) == 60
    assert len(set(ann_ids)) == len(ann_ids) == 300
    assert not list(dataset.rglob("*.tmp")), "temp files left behind"


def test_five_distinct_captions_in_small_vocabulary(dataset):
    vocab = set(shapes.vocabulary())
    assert len(vocab) <= 45
    seen = set()
    for split in SPLITS:
        for caps in _captions(_load(dataset, split)).values():
            assert len(caps) == 5 and len(set(caps)) == 5, caps
            for cap in caps:
                assert cap == cap.lower() and cap == cap.strip() and not cap.endswith(".")
                seen.update(shapes.tokenize(cap))
                # tokenize must not drop anything: only spaces remain between tokens
                assert re.sub(r"[a-z]+|[:,]", "", cap).strip() == ""
    assert seen == vocab, "vocabulary() must list exactly the words captions use"


def test_captions_true_to_metadata(dataset):
    for split in SPLITS:
        data = _load(dataset, split)
        caps = _captions(data)
        for im in data["images"]:
            objs = sorted(im["shapes"], key=lambda s: (s["row"], s["col"]))
            named = [(s["size"], s["color"], s["shape"]) for s in objs]
            canonical, counted, there, reverse, picture = caps[im["id"]]

            # canonical caption: every shape, in reading order, with sizes and true relations
            assert [m.groups() for m in NP_RE.finditer(canonical)] == named
            assert REL_RE.findall(canonical) == [_expected_relation(a, b) for a, b in zip(objs, objs[1:])]
            # reversed caption: same shapes backwards, relations inverted
            assert [m.groups()[1:] for m in NP_RE.finditer(reverse)] == [n[1:] for n in named[::-1]]
            rev = objs[::-1]
            assert REL_RE.findall(reverse) == [_expected_relation(a, b) for a, b in zip(rev, rev[1:])]
            # the count word is right, and so is the number of shapes named everywhere
            word, noun = re.match(r"(\w+) (shapes?):", counted).groups()
            assert COUNT[word] == len(objs) and (noun == "shape") == (len(objs) == 1)
            for cap in (canonical, counted, there, reverse, picture):
                pairs = sorted(m.groups()[1:] for m in NP_RE.finditer(cap))
                assert pairs == sorted((s["color"], s["shape"]) for s in objs), cap
            assert there.startswith("there is ") and picture.startswith("a picture of ")


def test_pixels_match_named_colours(dataset):
    for split in SPLITS:
        for im in _load(dataset, split)["images"]:
            with Image.open(dataset / "images" / im["file_name"]) as img:
                rgb = img.convert("RGB")
            small = rgb.resize((32, 32), Image.BOX)
            for s in im["shapes"]:
                assert rgb.getpixel((s["x"], s["y"])) == shapes.COLORS[s["color"]], (im["file_name"], s)
                # still the nearest palette colour after a downscale to 32 px
                got = small.getpixel((s["x"] // 2, s["y"] // 2))
                nearest = min(shapes.COLORS, key=lambda c: sum((u - v) ** 2 for u, v in zip(shapes.COLORS[c], got)))
                assert nearest == s["color"], (im["file_name"], s, got)
            # the shape sits inside its own grid cell, so shapes never overlap
            cell = 64 / 3
            for s in im["shapes"]:
                assert s["col"] * cell <= s["x"] - s["r"] and s["x"] + s["r"] < (s["col"] + 1) * cell
                assert s["row"] * cell <= s["y"] - s["r"] and s["y"] + s["r"] < (s["row"] + 1) * cell
            assert len({(s["row"], s["col"]) for s in im["shapes"]}) == len(im["shapes"])
            # image corners are background: a grey that no shape colour is
            corner = rgb.getpixel((0, 0))
            assert corner[0] == corner[1] == corner[2] and corner not in shapes.COLORS.values()


def test_sizes_are_visibly_different():
    for px in (32, 64, 128):
        rng = shapes._rng(0, "train")
        radii = {s["size"]: s["r"] for _ in range(30) for s in shapes.sample_scene(rng, px)["shapes"]}
        assert 2 * radii["small"] >= 0.18 * px and 2 * radii["large"] >= 0.29 * px
        assert radii["large"] >= 1.4 * radii["small"]


def test_describe_grammar_is_pinned():
    scene = {"shapes": [
        {"shape": "square", "color": "blue", "size": "small", "row": 2, "col": 0},
        {"shape": "circle", "color": "orange", "size": "large", "row": 0, "col": 1},
        {"shape": "star", "color": "red", "size": "small", "row": 2, "col": 2},
    ]}
    assert shapes.describe(scene) == [
        "a large orange circle above a small blue square left of a small red star",
        "three shapes: an orange circle, a blue square and a red star",
        "there is an orange circle above a blue square left of a red star",
        "a red star right of a blue square below an orange circle",
        "a picture of a large orange circle, a small blue square and a small red star",
    ]
    one = {"shapes": [{"shape": "cross", "color": "green", "size": "large", "row": 1, "col": 1}]}
    assert shapes.describe(one) == [
        "a large green cross", "one shape: a green cross", "there is a green cross",
        "a green cross", "a picture of a large green cross"]


def test_deterministic_and_seed_sensitive(tmp_path):
    kw = dict(n_train=6, n_val=3, n_test=3, size=48)
    a = _files(shapes.generate(tmp_path / "a", seed=7, **kw))
    b = _files(shapes.generate(tmp_path / "b", seed=7, **kw))
    c = _files(shapes.generate(tmp_path / "c", seed=8, **kw))
    assert len(a) == 3 + 12 and a == b
    assert a.keys() == c.keys()
    assert a["annotations/captions_train.json"] != c["annotations/captions_train.json"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) >= 6


def test_val_test_independent_of_train_count(tmp_path):
    small = _files(shapes.generate(tmp_path / "s", seed=1, n_train=4, n_val=3, n_test=3))
    big = _files(shapes.generate(tmp_path / "b", seed=1, n_train=11, n_val=3, n_test=3))
    for key, data in small.items():
        if not key.startswith(("annotations/captions_train", "images/train/")):
            assert big[key] == data, key
    # train is a stream too: growing it keeps the first images unchanged
    assert all(big[f"images/train/{i:06d}.png"] == small[f"images/train/{i:06d}.png"] for i in range(4))
    assert small["annotations/captions_train.json"] != big["annotations/captions_train.json"]


def test_main_writes_layout_then_skips(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["--out", str(out), "--train", "5", "--val", "2", "--test", "2", "--seed", "4"]
    assert shapes.main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert "5 train" in line and str(out) in line and "\n" not in line
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        assert (out / "annotations" / f"captions_{split}.json").is_file()
        assert len(list((out / "images" / split).glob("*.png"))) == n
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert shapes.main(argv) == 0
    assert "already up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # shrinking a split regenerates it and leaves no orphan images behind
    assert shapes.main(argv[:3] + ["2"] + argv[4:]) == 0
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["000000.png", "000001.png"]
    assert len(_load(out, "train")["images"]) == 2


@pytest.mark.parametrize("argv, flag", [
    (["--train", "-1"], "--train"),
    (["--val", "-2"], "--val"),
    (["--test", "-3"], "--test"),
    (["--size", "16"], "--size"),
    (["--seed", "-1"], "--seed"),
    (["--size", "big"], "--size"),
])
def test_bad_flags_return_2(tmp_path, capsys, argv, flag):
    out = tmp_path / "bad"
    assert shapes.main(["--out", str(out)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err
    assert not (out / "annotations").exists()


def test_missing_out_and_file_out_return_2(tmp_path, capsys):
    assert shapes.main([]) == 2
    assert "--out" in capsys.readouterr().err
    afile = tmp_path / "f"
    afile.write_text("x")
    assert shapes.main(["--out", str(afile), "--train", "1"]) == 2
    assert "--out" in capsys.readouterr().err
