"""Scene accuracy for the shapes set: does a caption name the objects that are in the picture?

CIDEr rewards captions that sound like the references; a caption can score well and still
call a red circle a blue diamond. The shapes set knows each image's scene (its annotation's
``images[].shapes``: colour, shape, size, grid row and column of every object), and its
captions come from one small grammar (:func:`synthetic.shapes.describe`), so what a caption
claims can be read back and checked:

- **exact**: the caption names exactly the scene's objects (colour + shape, as a multiset)
  and every size it states is right;
- **object precision / recall**: named objects that are in the scene / scene objects named
  (an object with a stated size must have that size to count);
- **count**: the number of objects the caption states ("two shapes: ...") or, when it states
  none, names, equals the scene's;
- **relation**: of the relations the caption states between two named objects ("a red circle
  above a blue square"), the fraction that hold in the scene (None when no caption states one).

Written by hand because no library reads this grammar; the grammar itself lives in
synthetic.shapes, and a test checks that all five references of every image score 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from synthetic import shapes

# the article is optional so captions in the linguistic_errors style ("there iz orange circle
# thwisss iz funny": articles dropped) read the same as the plain ones
_NP = re.compile(rf"\b(?:an? )?(?:({'|'.join(shapes.SIZES)}) )?({'|'.join(shapes.COLORS)}) "
                 rf"({'|'.join(shapes.SHAPES)})\b")
_RELATION = re.compile(r"^\s*(above|below|left of|right of)\s*$")
_COUNT = re.compile(rf"^\s*({'|'.join(shapes.COUNT_WORDS)}) shapes?\s*:")


#: scene_accuracy's numbers (metrics.json) as the report and the model card name them
LABELS = {"exact": "exact object set (share of captions)",
          "object_precision": "object precision (named objects in the image)",
          "object_recall": "object recall (image objects named)",
          "count": "object count right (share of captions)",
          "relation": "stated relations that hold"}


@dataclass
class Claims:
    """What one caption says: its objects in order of mention (size or None, colour, shape),
    the relations it states between consecutive objects (index, relation, index), and the
    object count it states (None when it states none)."""

    objects: list[tuple[str | None, str, str]] = field(default_factory=list)
    relations: list[tuple[int, str, int]] = field(default_factory=list)
    count: int | None = None


def read_claims(caption: str) -> Claims:
    """The objects, relations and count ``caption`` states, in the shapes grammar's words
    (case and extra spaces ignored; anything outside the grammar is ignored)."""
    text = " ".join(caption.lower().split())
    claims = Claims()
    count = _COUNT.match(text)
    if count:
        claims.count = shapes.COUNT_WORDS.index(count.group(1)) + 1
    matches = list(_NP.finditer(text))
    claims.objects = [(m.group(1), m.group(2), m.group(3)) for m in matches]
    for i, (a, b) in enumerate(zip(matches, matches[1:])):
        between = _RELATION.match(text[a.end():b.start()])
        if between:
            claims.relations.append((i, between.group(1), i + 1))
    return claims


#: above this many named objects the matching is greedy instead of searched (a caption that
#: long has repeated itself; the search would grow as 4 ** n)
_SEARCH_LIMIT = 8


def _match(claims: Claims, scene: Sequence[Mapping[str, Any]]) -> list[int | None]:
    """For each named object, the index of the scene object it is (same colour and shape, and
    size when one is named), each scene object used once; None for a named object that is not
    in the scene. When a scene holds look-alikes (two red circles), the assignment that makes
    the most matches, then the most stated relations true, is taken: "a red circle below a
    red circle" names the lower one first."""
    candidates = [[j for j, s in enumerate(scene) if s["color"] == color and s["shape"] == kind
                   and size in (None, s["size"])] for size, color, kind in claims.objects]
    if len(candidates) > _SEARCH_LIMIT:
        free, out = set(range(len(scene))), []
        for options in candidates:
            pick = next((j for j in options if j in free), None)
            free.discard(pick)
            out.append(pick)
        return out
    best: tuple[tuple[int, int], list[int | None]] = ((-1, -1), [])

    def search(i: int, taken: list[int | None]) -> None:
        nonlocal best
        if i == len(candidates):
            key = (sum(t is not None for t in taken), _relations_right(claims, taken, scene))
            if key > best[0]:
                best = (key, list(taken))
            return
        for j in candidates[i]:
            if j not in taken:
                search(i + 1, [*taken, j])
        search(i + 1, [*taken, None])

    search(0, [])
    return best[1]


def _relations_right(claims: Claims, matched: Sequence[int | None], scene: Sequence[Mapping[str, Any]]) -> int:
    """How many stated relations hold between the scene objects ``matched`` assigns."""
    return sum(1 for a, rel, b in claims.relations
               if matched[a] is not None and matched[b] is not None
               and shapes.relation(scene[matched[a]], scene[matched[b]]) == rel)


@dataclass
class SceneScore:
    """One caption's scores against its scene."""

    exact: bool
    named: int
    in_scene: int
    matched: int
    count_right: bool
    relations_stated: int
    relations_right: int
    #: scene objects the caption does not name ("large red circle"), and named objects that are
    #: not in the scene (as stated: "blue square"): what a report shows the caption got wrong
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "object_precision": self.matched / self.named if self.named else 0.0,
                "object_recall": self.matched / self.in_scene if self.in_scene else 1.0,
                "count_right": self.count_right, "relations_stated": self.relations_stated,
                "relations_right": self.relations_right, "missing": list(self.missing), "extra": list(self.extra)}


def score_caption(caption: str, scene: Sequence[Mapping[str, Any]]) -> SceneScore:
    """Score ``caption`` against ``scene`` (the list of an image's ``shapes``)."""
    claims = read_claims(caption)
    matched = _match(claims, scene)
    hits = sum(m is not None for m in matched)
    stated = claims.count if claims.count is not None else len(claims.objects)
    exact = hits == len(scene) == len(claims.objects)  # a one-to-one match of colour, shape (and stated size)
    right = _relations_right(claims, matched, scene)
    used = set(matched)
    missing = [f"{s['size']} {s['color']} {s['shape']}" for j, s in enumerate(scene) if j not in used]
    extra = [" ".join(w for w in obj if w) for obj, m in zip(claims.objects, matched) if m is None]
    return SceneScore(exact=exact, named=len(claims.objects), in_scene=len(scene), matched=hits,
                      count_right=stated == len(scene), relations_stated=len(claims.relations),
                      relations_right=right, missing=missing, extra=extra)


def scenes_of(references: Mapping[str, Any]) -> dict[Any, list[dict]] | None:
    """{image_id: its shapes} from COCO caption annotations written by synthetic.shapes, or
    None when the file carries no scenes (another dataset)."""
    images = references.get("images") if isinstance(references, Mapping) else None
    if not isinstance(images, list) or not images or not all(isinstance(im.get("shapes"), list) for im in images):
        return None
    return {im["id"]: im["shapes"] for im in images}


def scene_accuracy(scenes: Mapping[Any, Sequence[Mapping[str, Any]]],
                   predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Corpus scene accuracy of COCO results (``[{"image_id", "caption"}]``) against
    ``scenes`` ({image_id: shapes}); every image of ``scenes`` needs one prediction.

    Returns ``exact`` (the share of images whose caption names exactly their objects),
    ``object_precision`` and ``object_recall`` (over all objects named / in the scenes),
    ``count`` (the share with the right object count), ``relation`` (the share of stated
    relations that hold; None when none was stated), ``n_images``, and ``per_image``
    ({image_id: that image's scores})."""
    captions = {p["image_id"]: p["caption"] for p in predictions}
    missing = [i for i in scenes if i not in captions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} image(s) with a scene, e.g. {missing[0]!r}")
    per_image = {i: score_caption(captions[i], scene) for i, scene in scenes.items()}
    scores = list(per_image.values())
    n = len(scores)
    named, in_scene = sum(s.named for s in scores), sum(s.in_scene for s in scores)
    stated = sum(s.relations_stated for s in scores)
    return {
        "exact": sum(s.exact for s in scores) / n if n else 0.0,
        "object_precision": sum(s.matched for s in scores) / named if named else 0.0,
        "object_recall": sum(s.matched for s in scores) / in_scene if in_scene else 0.0,
        "count": sum(s.count_right for s in scores) / n if n else 0.0,
        "relation": sum(s.relations_right for s in scores) / stated if stated else None,
        "n_images": n,
        "per_image": {i: s.as_dict() for i, s in per_image.items()},
    }
