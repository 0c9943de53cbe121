"""Tests for captioning.data: every local format, selection, hashing, the hub table logic
(on in-memory datasets) and fast, clear failures."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning import data as data_mod
from captioning.data import (
    HUB_DATASETS,
    CaptionDataset,
    CaptionExample,
    load_captions,
)
from captioning.data.hub import from_hf_dataset, from_hf_stream
from captioning.errors import UserError


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Offline, with empty caches: the libraries read these settings once, at import."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_home" / "datasets")


def _png(value: int) -> bytes:
    """A 4x4 PNG whose pixels encode ``value`` (so images can be told apart)."""
    im = Image.new("RGB", (4, 4), (value % 256, (value // 256) % 256, 7))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _caps(i: int, k: int = 2) -> list[str]:
    return [f"image {i} caption {j}" for j in range(k)]


def make_coco_dir(root: Path, splits: dict[str, int], *, start_id: int = 1) -> Path:
    """The shapes layout: DIR/annotations/captions_<split>.json, DIR/images/<split>/*.png."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_id = start_id
    for split, n in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        coco_images, anns = [], []
        for _ in range(n):
            name = f"{split}/{image_id:06d}.png"
            (root / "images" / name).write_bytes(_png(image_id))
            coco_images.append({"id": image_id, "file_name": name, "width": 4, "height": 4})
            for caption in _caps(image_id):
                anns.append({"image_id": image_id, "caption": caption, "id": len(anns) + 100})
            image_id += 1
        doc = {"images": coco_images, "annotations": anns}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(doc))
    return root


def _pixel(ex: CaptionExample) -> tuple:
    return ex.load_image().getpixel((0, 0))


# ------------------------------------------------------------------ COCO sources


def test_coco_dir_loads_all_refs_and_images(tmp_path):
    root = make_coco_dir(tmp_path / "shapes", {"train": 3, "val": 2})
    ds = load_captions(str(root), "val")
    assert isinstance(ds, CaptionDataset)
    assert (ds.source, ds.split, len(ds)) == (str(root), "val", 2)
    ex = ds[0]
    assert ex.image_id == 4
    assert ex.references == _caps(4)
    assert ex.file_name == "val/000004.png"
    assert ex.image_path == root / "images" / "val" / "000004.png"
    assert _pixel(ex) == (4, 0, 7)
    assert [e.image_id for e in load_captions(str(root), "train")] == [1, 2, 3]


def test_coco_json_with_images_dir(tmp_path):
    root = make_coco_dir(tmp_path / "a", {"test": 2})
    moved = tmp_path / "elsewhere" / "refs.json"
    moved.parent.mkdir()
    moved.write_text((root / "annotations" / "captions_test.json").read_text())
    # Without images_dir the json's neighbourhood has no images: a clear error.
    with pytest.raises(UserError, match=r"image 'test/000001\.png' not found.*--images-dir"):
        load_captions(str(moved), "test")
    ds = load_captions(str(moved), "test", images_dir=str(root / "images"))
    assert [e.image_id for e in ds] == [1, 2]
    assert _pixel(ds[1]) == (2, 0, 7)


def test_coco_json_path_finds_sibling_images(tmp_path):
    root = make_coco_dir(tmp_path / "b", {"train": 2})
    ds = load_captions(str(root / "annotations" / "captions_train.json"), "train")
    assert ds[0].image_path == root / "images" / "train" / "000001.png"


@pytest.mark.parametrize("layout", ["val2017", "images/val2014"])
def test_coco_originals_layout(tmp_path, layout):
    split = layout.split("/")[-1]
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / layout).mkdir(parents=True)
    names = {391895: f"COCO_{split}_000000391895.jpg", 139: "000000000139.jpg"}
    for image_id, name in names.items():
        (root / layout / name).write_bytes(_png(image_id))
    doc = {
        "info": {}, "licenses": [],
        "images": [{"id": i, "file_name": n, "coco_url": "http://x"} for i, n in names.items()],
        "annotations": [
            {"image_id": 391895, "id": 1, "caption": "A man riding a bike."},
            {"image_id": 139, "id": 2, "caption": "A living room."},
            {"image_id": 391895, "id": 3, "caption": "A person on a motorcycle."},
        ],
    }
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(doc))
    ds = load_captions(str(root), split)
    assert ds[0].references == ["A man riding a bike.", "A person on a motorcycle."]
    assert ds[0].image_path == root / layout / names[391895]
    assert _pixel(ds[1]) == (139, 0, 7)


def test_coco_missing_image_names_first_missing(tmp_path):
    root = make_coco_dir(tmp_path / "c", {"val": 3})
    (root / "images" / "val" / "000002.png").unlink()
    with pytest.raises(UserError, match=r"image 'val/000002\.png' not found.*--images-dir"):
        load_captions(str(root), "val")
    # Images outside the selection do not block it.
    assert len(load_captions(str(root), "val", max_samples=1)) == 1


def test_coco_errors(tmp_path):
    root = make_coco_dir(tmp_path / "d", {"train": 1, "val": 1})
    with pytest.raises(UserError, match=r"no annotations/captions_test\.json; splits found: train, val"):
        load_captions(str(root), "test")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,, }\n]}')
    with pytest.raises(UserError, match=r"bad\.json is not valid JSON: .* at line 2 column 12"):
        load_captions(str(bad), "val")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": 1, "caption": "x"}]))
    with pytest.raises(UserError, match="predictions"):
        load_captions(str(preds), "val")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserError, match="holds no captioned images"):
        load_captions(str(empty), "val")
    orphan = tmp_path / "orphan.json"
    orphan.write_text(json.dumps({"images": [], "annotations": [{"image_id": 9, "caption": "x"}]}))
    with pytest.raises(UserError, match="image_id 9, which is not in images"):
        load_captions(str(orphan), "val")
    with pytest.raises(UserError, match=r"--images-dir .*no such folder"):
        load_captions(str(root), "val", images_dir=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="max_samples"):
        load_captions(str(root), "val", max_samples=0)


def test_missing_source_is_clear(tmp_path):
    with pytest.raises(UserError, match=r"no such file or folder.*known: .*jxie/coco_captions"):
        load_captions(str(tmp_path / "not-here"), "train")
    plain = tmp_path / "folder"
    plain.mkdir()
    with pytest.raises(UserError, match="not a dataset folder"):
        load_captions(str(plain), "train")


def test_loading_1000_images_is_fast_and_decodes_nothing(tmp_path, monkeypatch):
    root = tmp_path / "big"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    png = _png(1)
    coco_images, anns = [], []
    for i in range(1000):
        (root / "images" / "val" / f"{i}.png").write_bytes(png)
        coco_images.append({"id": i, "file_name": f"val/{i}.png"})
        anns += [{"image_id": i, "caption": f"c{i} {k}", "id": 5 * i + k} for k in range(5)]
    (root / "annotations" / "captions_val.json").write_text(
        json.dumps({"images": coco_images, "annotations": anns})
    )

    def no_decoding(*a, **k):
        raise AssertionError("an image was opened while loading the dataset")

    monkeypatch.setattr(Image, "open", no_decoding)  # loading is lazy: that is what keeps it fast
    ds = load_captions(str(root), "val")
    assert len(ds) == 1000 and len(ds[999].references) == 5


# ------------------------------------------------------------------ image folders


def _imagefolder(root: Path, files: dict[str, list[str]], fmt: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(i + 50))
    if fmt == "jsonl":
        with open(root / "metadata.jsonl", "w") as fh:
            for name, caps in files.items():
                record = {"file_name": name, "caption": caps[0]} if len(caps) == 1 else {
                    "file_name": name, "captions": caps}
                fh.write(json.dumps(record) + "\n")
    else:
        with open(root / "metadata.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name", "captions"])
            for name, caps in files.items():
                writer.writerow([name, json.dumps(caps)])
    return root


def test_imagefolder_jsonl_with_split_subfolders(tmp_path):
    root = tmp_path / "folder"
    _imagefolder(root / "train", {"a.png": ["one"], "sub/b.png": ["two", "three"]}, "jsonl")
    _imagefolder(root / "validation", {"c.png": ["four"]}, "jsonl")
    ds = load_captions(str(root), "train")
    assert [(e.image_id, e.references, e.file_name) for e in ds] == [
        ("a.png", ["one"], "a.png"), ("sub/b.png", ["two", "three"], "sub/b.png")]
    assert _pixel(ds[1]) == (51, 0, 7)
    assert load_captions(str(root), "validation")[0].references == ["four"]
    with pytest.raises(UserError, match="no split 'test'.*splits found: train, validation"):
        load_captions(str(root), "test")


def test_imagefolder_csv_with_captions_list(tmp_path):
    root = _imagefolder(tmp_path / "csvset", {"x.png": ["a, with comma", 'b "quoted"']}, "csv")
    ds = load_captions(str(root), "train")
    assert ds[0].references == ["a, with comma", 'b "quoted"']
    assert ds[0].image_path == root / "x.png"
    # A flat folder is one split: "train" or the folder's own name, nothing else.
    assert len(load_captions(str(root), "csvset")) == 1
    with pytest.raises(UserError, match="flat image folder.*'train'"):
        load_captions(str(root), "validation")


def test_imagefolder_rows_with_same_file_are_merged(tmp_path):
    root = tmp_path / "rows"
    root.mkdir()
    (root / "p.png").write_bytes(_png(1))
    (root / "metadata.jsonl").write_text(
        '{"file_name": "p.png", "caption": "first"}\n\n{"file_name": "p.png", "text": "second"}\n'
    )
    ds = load_captions(str(root), "train")
    assert len(ds) == 1 and ds[0].references == ["first", "second"]


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "caption": "ok"}\n{"file_name": \n')
    with pytest.raises(UserError, match=r"metadata\.jsonl: line 2 is not valid JSON"):
        load_captions(str(root), "train")
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "caption": "ok"}\n')
    with pytest.raises(UserError, match=r"image 'a\.png' not found.*relative to"):
        load_captions(str(root), "train")
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "label": 3}\n')
    with pytest.raises(UserError, match="no caption column.*label"):
        load_captions(str(root), "train")
    (root / "metadata.csv").write_text("file_name,caption\n")
    with pytest.raises(UserError, match="both metadata.jsonl and metadata.csv"):
        load_captions(str(root), "train")
    (root / "metadata.jsonl").unlink()
    (root / "metadata.csv").write_text('file_name,captions\na.png,"[not json"\n')
    with pytest.raises(UserError, match="line 2: captions is not a JSON list"):
        load_captions(str(root), "train")


# ------------------------------------------------------------------ selection + hashing


def test_max_samples_and_seeded_shuffle(tmp_path):
    root = make_coco_dir(tmp_path / "s", {"train": 20})
    plain = [e.image_id for e in load_captions(str(root), "train", max_samples=5)]
    assert plain == [1, 2, 3, 4, 5]
    a = [e.image_id for e in load_captions(str(root), "train", shuffle=True, seed=3)]
    b = [e.image_id for e in load_captions(str(root), "train", shuffle=True, seed=3)]
    c = [e.image_id for e in load_captions(str(root), "train", shuffle=True, seed=4)]
    assert a == b and a != c and sorted(a) == list(range(1, 21)) and a != list(range(1, 21))
    head = [e.image_id for e in load_captions(str(root), "train", shuffle=True, seed=3,
                                              max_samples=4)]
    assert head == a[:4]  # max_samples applies after the shuffle


def test_content_hash_stable_and_sensitive(tmp_path):
    root = make_coco_dir(tmp_path / "h", {"val": 3})
    ds = load_captions(str(root), "val")
    # Pinned value: the hash must not change between runs, machines or refactors.
    assert ds.content_hash() == _expected_hash(ds)
    assert ds.content_hash() == load_captions(str(root), "val").content_hash()
    assert len(ds.content_hash()) == 64
    # Order of images and of captions does not matter.
    rev = CaptionDataset(
        [CaptionExample(e.image_id, e.references[::-1], None) for e in reversed(list(ds))],
        source="x", split="y",
    )
    assert rev.content_hash() == ds.content_hash()
    # One changed caption changes it.
    path = root / "annotations" / "captions_val.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["caption"] += "!"
    path.write_text(json.dumps(doc))
    assert load_captions(str(root), "val").content_hash() != ds.content_hash()
    info = ds.describe()
    assert info == {"source": str(root), "split": "val", "n_images": 3, "n_references": 6,
                    "hash": ds.content_hash(), "caption_transform": "none"}
    # references rewritten by a caption transform are other references: their own hash, recorded as such
    styled = ds.with_caption_transform("linguistic_errors")
    assert styled.describe()["caption_transform"] == "linguistic_errors"
    assert styled.content_hash() != ds.content_hash() and styled[:2].caption_transform == "linguistic_errors"
    assert all(r.endswith("thwisss iz funny") for ex in styled for r in ex.references)
    assert ds.with_caption_transform("none") is ds
    with pytest.raises(UserError, match="caption transform 'shout': choose one of none, linguistic_errors"):
        ds.with_caption_transform("shout")


def _expected_hash(ds) -> str:
    import hashlib

    canonical = json.dumps(
        sorted(([e.image_id, sorted(e.references)] for e in ds), key=json.dumps),
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_content_hash_pinned():
    # A literal: if this changes, every recorded metrics.json hash stops matching.
    ds = CaptionDataset([CaptionExample(1, ["b", "a"], "x.png"), CaptionExample("k", ["c"], None)],
                        source="s", split="t")
    assert ds.content_hash() == "314b83e8d150574f093114f42710b40cd50bf7fc332f29c300d35b5e3b86eafa"


def test_references_coco_round_trips(tmp_path):
    root = make_coco_dir(tmp_path / "r", {"val": 3})
    ds = load_captions(str(root), "val")
    refs = ds.references_coco()
    assert refs["images"] == [{"id": i, "file_name": f"val/{i:06d}.png"} for i in (1, 2, 3)]
    assert [a["caption"] for a in refs["annotations"] if a["image_id"] == 2] == _caps(2)
    assert len({a["id"] for a in refs["annotations"]}) == len(refs["annotations"]) == 6
    out = tmp_path / "refs.json"
    out.write_text(json.dumps(refs))
    again = load_captions(str(out), "val", images_dir=str(root / "images"))
    assert [(e.image_id, e.references, e.file_name) for e in again] == [
        (e.image_id, e.references, e.file_name) for e in ds]
    assert again.content_hash() == ds.content_hash()
    sliced = ds[1:]
    assert isinstance(sliced, CaptionDataset) and [e.image_id for e in sliced] == [2, 3]


# ------------------------------------------------------------------ hub table logic


def _hf(columns: dict, features: dict | None = None):
    import datasets

    feats = datasets.Features(features) if features else None
    return datasets.Dataset.from_dict(columns, features=feats)


def _img_feature():
    import datasets

    return datasets.Image()


def _value(kind):
    import datasets

    return datasets.Value(kind)


def test_hub_table_has_known_ids():
    assert {"jxie/coco_captions", "yerevann/coco-karpathy", "ariG23498/flickr8k"} <= set(HUB_DATASETS)


def test_jxie_rows_grouped_by_cocoid():
    rows = {"image": [], "filename": [], "cocoid": [], "caption": []}
    for cocoid in (10, 20, 30):
        for k in range(5 if cocoid != 20 else 3):
            rows["image"].append({"bytes": _png(cocoid), "path": None})
            rows["filename"].append(f"COCO_val2014_{cocoid:012d}.jpg")
            rows["cocoid"].append(cocoid)
            rows["caption"].append(f"img {cocoid} cap {k}")
    ds = _hf(rows, {"image": _img_feature(), "filename": _value("string"),
                    "cocoid": _value("int64"), "caption": _value("string")})
    out = from_hf_dataset(ds, HUB_DATASETS["jxie/coco_captions"], "validation",
                           source="jxie/coco_captions")
    assert [e.image_id for e in out] == [10, 20, 30]
    assert [len(e.references) for e in out] == [5, 3, 5]
    assert out[1].references[0] == "img 20 cap 0"
    assert out[1].file_name == "COCO_val2014_000000000020.jpg"
    assert _pixel(out[1]) == (20, 0, 7)  # decoded lazily from the Arrow row
    sub = from_hf_dataset(ds, HUB_DATASETS["jxie/coco_captions"], "validation",
                           source="jxie/coco_captions", shuffle=True, seed=1, max_samples=2)
    again = from_hf_dataset(ds, HUB_DATASETS["jxie/coco_captions"], "validation",
                             source="jxie/coco_captions", shuffle=True, seed=1, max_samples=2)
    assert len(sub) == 2 and [e.image_id for e in sub] == [e.image_id for e in again]


def test_karpathy_needs_images_dir_and_resolves_paths(tmp_path):
    spec = HUB_DATASETS["yerevann/coco-karpathy"]
    ds = _hf({
        "filepath": ["val2014", "train2014"],
        "filename": ["COCO_val2014_000000000042.jpg", "COCO_train2014_000000000009.jpg"],
        "sentences": [["a dog.", "a brown dog."], ["a cat."]],
        "cocoid": [42, 9],
        "url": ["http://images.cocodataset.org/val2014/x.jpg", "http://x"],
    })
    coco = tmp_path / "coco"
    for sub, name, value in (("val2014", "COCO_val2014_000000000042.jpg", 42),
                             ("train2014", "COCO_train2014_000000000009.jpg", 9)):
        (coco / sub).mkdir(parents=True)
        (coco / sub / name).write_bytes(_png(value))
    out = from_hf_dataset(ds, spec, "test", source="yerevann/coco-karpathy", images_dir=coco)
    assert [(e.image_id, e.references) for e in out] == [
        (42, ["a dog.", "a brown dog."]), (9, ["a cat."])]
    assert out[0].file_name == "val2014/COCO_val2014_000000000042.jpg"
    assert _pixel(out[0]) == (42, 0, 7)
    (coco / "train2014" / "COCO_train2014_000000000009.jpg").unlink()
    with pytest.raises(UserError, match="COCO_train2014_000000000009.jpg' not found"):
        from_hf_dataset(ds, spec, "test", source="yerevann/coco-karpathy", images_dir=coco)
    # Through the public entry point the missing images_dir is caught before any network.
    with pytest.raises(UserError, match="image URLs.*--images-dir"):
        load_captions("yerevann/coco-karpathy", "test")


def _flickr_like(n_images: int, caps_per_image: int = 2):
    rows = {"image": [], "text": []}
    for i in range(n_images):
        for k in range(caps_per_image):
            rows["image"].append({"bytes": _png(i), "path": None})
            rows["text"].append(f"photo {i} caption {k}")
    return _hf(rows, {"image": _img_feature(), "text": _value("string")})


def test_flickr8k_split_by_image_90_5_5_without_overlap():
    spec = HUB_DATASETS["ariG23498/flickr8k"]
    ds = _flickr_like(200)
    parts = {s: from_hf_dataset(ds, spec, s, source="ariG23498/flickr8k")
             for s in ("train", "validation", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 180, "validation": 10, "test": 10}
    ids = {s: {e.image_id for e in p} for s, p in parts.items()}
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
                or ids["validation"] & ids["test"])
    assert len(ids["train"] | ids["validation"] | ids["test"]) == 200
    # Every image keeps both of its captions, and the captions match the pixels.
    for ex in parts["test"]:
        assert len(ex.references) == 2
        number = int(ex.references[0].split()[1])
        assert ex.references == [f"photo {number} caption 0", f"photo {number} caption 1"]
        assert _pixel(ex) == (number % 256, number // 256, 7)
    # Deterministic: the same cut every time.
    again = from_hf_dataset(ds, spec, "test", source="ariG23498/flickr8k")
    assert [e.image_id for e in again] == [e.image_id for e in parts["test"]]


def test_hub_columns_mismatch_is_clear():
    ds = _hf({"img": [1], "sentence": ["x"]})
    with pytest.raises(UserError, match="expected columns caption, image.*has img, sentence"):
        from_hf_dataset(ds, HUB_DATASETS["jxie/coco_captions"], "train", source="jxie/coco_captions")


def test_streaming_reads_first_images_only():
    ds = _flickr_like(6, caps_per_image=3).to_iterable_dataset()
    out = from_hf_stream(ds, HUB_DATASETS["ariG23498/flickr8k"], "train",
                          source="ariG23498/flickr8k", max_samples=2)
    assert len(out) == 2
    assert out[0].references == [f"photo 0 caption {k}" for k in range(3)]
    assert _pixel(out[1]) == (1, 0, 7)


def test_streaming_option_checks():
    with pytest.raises(UserError, match="drop --streaming"):
        load_captions("ariG23498/flickr8k", "train", streaming=True, max_samples=3)
    with pytest.raises(UserError, match="needs --max-samples"):
        load_captions("jxie/coco_captions", "train", streaming=True)
    with pytest.raises(UserError, match="no split 'val'; splits: train, validation, test"):
        load_captions("jxie/coco_captions", "val")


def test_offline_hub_fails_fast_with_clear_message():
    """Fast because nothing is tried on the network (online, the client would retry for
    minutes): every connection attempt is refused and recorded."""
    from tests.space.helpers import NetworkGuard

    guard = NetworkGuard().install()
    try:
        with pytest.raises(UserError) as info:
            load_captions("jxie/coco_captions", "validation")
    finally:
        guard.uninstall()
    assert guard.violations == []
    message = str(info.value)
    assert "unreachable" in message and "HF_HUB_OFFLINE" in message
    assert "COCO captions .json" in message and "metadata.jsonl" in message
    assert "\n" not in message


def test_unknown_hub_id_lists_known_ids():
    with pytest.raises(UserError) as info:
        load_captions("someone/other_captions", "train")
    message = str(info.value)
    for known in HUB_DATASETS:
        assert known in message
    assert "HUB_DATASETS" in message and "metadata.jsonl" in message


def test_example_without_image_raises_image_error():
    from captioning.images import ImageError

    with pytest.raises(ImageError, match="x.png: this example has no image data"):
        CaptionExample(1, ["a"], "x.png").load_image()
    ex = CaptionExample(2, ["b"], "mem", Image.fromarray(np.zeros((2, 3, 3), np.uint8)))
    assert ex.load_image().size == (3, 2)
    assert data_mod.CaptionExample is CaptionExample


def test_offline_cache_check_reads_the_libraries_cache_locations(tmp_path):
    """The fixture points the hub and datasets caches into tmp_path: a repo folder in the hub
    cache, or a prepared copy in the datasets cache, counts as cached; nothing else does."""
    from captioning.data import hub

    assert not hub._cached("jxie/coco_captions")
    (tmp_path / "hf_home" / "hub" / "datasets--jxie--coco_captions").mkdir(parents=True)
    assert hub._cached("jxie/coco_captions")
    assert not hub._cached("ariG23498/flickr8k")
    (tmp_path / "hf_home" / "datasets" / "ariG23498___flickr8k").mkdir(parents=True)
    assert hub._cached("ariG23498/flickr8k")


def test_scenes_come_from_annotations_that_record_them(tmp_path):
    """The shapes set's images[].shapes travel with each example (eval.scene reads them);
    annotations without them give no scenes rather than partial ones."""
    from synthetic import shapes

    root = shapes.generate(tmp_path / "shapes", n_train=0, n_val=0, n_test=4)
    ds = load_captions(str(root), "test", max_samples=3)
    scenes = ds.scenes()
    raw = json.loads((root / "annotations" / "captions_test.json").read_text())
    assert scenes == {im["id"]: im["shapes"] for im in raw["images"] if im["id"] in scenes} and len(scenes) == 3
    assert ds.with_caption_transform("linguistic_errors").scenes() == scenes
    for im in raw["images"][:1]:
        del im["shapes"]
    (tmp_path / "partial.json").write_text(json.dumps(raw))
    (tmp_path / "images").symlink_to(root / "images")
    assert load_captions(str(tmp_path / "partial.json"), "test").scenes() is None
