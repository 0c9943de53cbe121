"""The demo-size SmolVLM-architecture model learns to read the image, not only to sound like
a caption: a short run of the shapes-demo recipe (tests/learning.py's shapes_demo: 400 of the
recipe's 2000 steps, 4000 training images, ~90 s) is checked with scene accuracy on 100 test
images of a seed it never trained on.

The untrained model names nothing (every scene number 0). A model that learned the grammar
but ignores the image gets the object count right for about a third of the images (one to
three objects) and names an object of the image 1 time in 42 (7 colours x 6 shapes). After
400 steps the model counts right and reads colours; the shapes come later (the recipe's 2000
steps reach ~90% exact object sets: BENCHMARKS.md, "Demo"). Measured over 3 seeds x 1 and 2
torch threads (tests/learning.py's spread; BENCHMARKS.md, "Learning tests"): count 1.0 in
every run, object recall and precision 0.163-0.179, exact 0.09-0.11, CIDEr 2.17-2.32. The
thresholds are about half the smallest measured value, far above what an image-blind model
reaches.
"""

from tests import learning

COUNT, OBJECTS, EXACT, CIDER = 0.8, 0.08, 0.04, 1.0


def test_demo_model_reads_unseen_images(tmp_path):
    from eval.scoring import Scorer

    with Scorer() as scorer:
        got = learning.shapes_demo(tmp_path, seed=0, scorer=scorer)
    print(f"after 400 steps, 100 unseen images: {got}")
    assert got["count"] >= COUNT, got
    assert got["object_recall"] >= OBJECTS and got["object_precision"] >= OBJECTS, got
    assert got["exact"] >= EXACT, got
    assert got["CIDEr"] >= CIDER, got
