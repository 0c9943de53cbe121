"""eval.scene: every reference caption of the shapes grammar is scored right; wrong captions
lose exactly what they get wrong."""

from __future__ import annotations

import json

import pytest

from captioning.data import caption_transform
from eval.scene import read_claims, scene_accuracy, scenes_of, score_caption
from synthetic import shapes


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = shapes.generate(tmp_path_factory.mktemp("shapes"), n_train=0, n_val=0, n_test=120)
    refs = json.loads((root / "annotations" / "captions_test.json").read_text())
    return refs


@pytest.mark.parametrize("style", ["none", "linguistic_errors"])
def test_all_five_references_of_every_image_score_one(test_split, style):
    """Each reference form, plain and in the style fine-tune's style (articles dropped)."""
    transform = caption_transform(style)
    scenes = scenes_of(test_split)
    assert scenes is not None and len(scenes) == 120
    by_image: dict = {}
    for a in test_split["annotations"]:
        by_image.setdefault(a["image_id"], []).append(transform(a["caption"]))
    assert all(len(c) == 5 for c in by_image.values())
    for k in range(5):  # reference k of every image, as a set of predictions
        preds = [{"image_id": i, "caption": caps[k]} for i, caps in by_image.items()]
        result = scene_accuracy(scenes, preds)
        assert (result["exact"], result["object_precision"], result["object_recall"], result["count"]) == (1, 1, 1, 1)
        assert result["relation"] in (None, 1.0)
        if k in (0, 2, 3):  # the chain forms state relations whenever an image has two objects
            assert result["relation"] == 1.0


SCENE = [{"shape": "diamond", "color": "black", "size": "large", "row": 0, "col": 0},
         {"shape": "diamond", "color": "red", "size": "small", "row": 0, "col": 2},
         {"shape": "cross", "color": "purple", "size": "large", "row": 2, "col": 1}]


@pytest.mark.parametrize("caption, exact, precision, recall, count, stated, right", [
    ("a large black diamond left of a small red diamond above a large purple cross", True, 1, 1, True, 2, 2),
    ("three shapes: a black diamond, a red diamond and a purple cross", True, 1, 1, True, 0, 0),
    # the demo's caption that CIDEr liked: one object of three right
    ("a large black triangle, a large red diamond and a large purple diamond", False, 0, 0, True, 0, 0),
    ("a black diamond, a red diamond and a purple diamond", False, 2 / 3, 2 / 3, True, 0, 0),
    ("a large black diamond right of a small red diamond", False, 1, 2 / 3, False, 1, 0),
    ("two shapes: a black diamond and a red diamond and a purple cross", True, 1, 1, False, 0, 0),
    ("a small black diamond and a small red diamond and a large purple cross", False, 2 / 3, 2 / 3, True, 0, 0),
    ("a cat on a mat", False, 0, 0, False, 0, 0),
    ("", False, 0, 0, False, 0, 0),
])
def test_wrong_captions_lose_what_they_get_wrong(caption, exact, precision, recall, count, stated, right):
    s = score_caption(caption, SCENE).as_dict()
    assert s["exact"] is exact
    assert s["object_precision"] == pytest.approx(precision) and s["object_recall"] == pytest.approx(recall)
    assert (s["count_right"], s["relations_stated"], s["relations_right"]) == (count, stated, right)


def test_claims_ignore_case_and_spacing():
    claims = read_claims("  Two   SHAPES: a Red Circle  above an orange square ")
    assert claims.count == 2 and claims.objects == [(None, "red", "circle"), (None, "orange", "square")]
    assert claims.relations == [(0, "above", 1)]


def test_corpus_numbers_and_refusals():
    scenes = {1: SCENE, 2: SCENE[:1]}
    preds = [{"image_id": 1, "caption": "a black diamond left of a red diamond above a purple cross"},
             {"image_id": 2, "caption": "a red circle"}]
    r = scene_accuracy(scenes, preds)
    assert r["exact"] == 0.5 and r["object_precision"] == pytest.approx(3 / 4)
    assert r["object_recall"] == pytest.approx(3 / 4) and r["count"] == 1.0 and r["relation"] == 1.0
    assert r["n_images"] == 2 and r["per_image"][2]["object_precision"] == 0.0
    with pytest.raises(ValueError, match="no prediction for 1 image"):
        scene_accuracy(scenes, preds[:1])
    assert scenes_of({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": []}) is None


def test_look_alikes_are_matched_so_stated_relations_can_hold():
    twins = [{"shape": "circle", "color": "red", "size": "large", "row": 0, "col": 1},
             {"shape": "circle", "color": "red", "size": "small", "row": 1, "col": 1}]
    s = score_caption("a red circle below a red circle", twins).as_dict()
    assert s["exact"] and (s["relations_stated"], s["relations_right"]) == (1, 1)
    s = score_caption("a small red circle above a large red circle", twins).as_dict()
    assert s["exact"] and (s["relations_stated"], s["relations_right"]) == (1, 0)
    long = " and ".join(["a red circle"] * 40)  # a degenerate caption stays cheap to score
    s = score_caption(long, twins).as_dict()
    assert not s["exact"] and s["object_precision"] == pytest.approx(2 / 40) and s["object_recall"] == 1.0
