"""User mistakes at the entry points: each gets exit code 2 and one line on stderr that names
the flag or file and says what to do; never a traceback, and no file is written.

One row per mistake: (entry point, arguments, a fragment the message must hold). Entry
points are called in-process through their ``main(argv)``.
"""

from __future__ import annotations

import json
import shutil

import pytest


def _main(name: str):
    if name == "eval":
        from eval.run import main
    elif name == "train":
        from training.train import main
    elif name == "caption":
        from captioning.caption import main
    elif name == "release":
        from release.cli import main
    elif name == "shapes":
        from synthetic.shapes import main
    elif name == "factory":
        from synthetic.factory import main
    elif name == "space":
        from tests.space.helpers import load_app_module

        main = load_app_module().main
    else:
        raise AssertionError(name)
    return main


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_models, shapes_dir):
    """Folders the rows point at: a model folder without config.json, a training output's
    metrics.json, a recipe with a type error."""
    root = tmp_path_factory.mktemp("bad-inputs")
    no_config = root / "no-config"
    shutil.copytree(tiny_models["idefics3"], no_config)
    (no_config / "config.json").unlink()
    train_out = root / "train-out"
    train_out.mkdir()
    (train_out / "metrics.json").write_text(json.dumps({"metrics": {"loss": 1.0}, "history": [], "train": {}}))
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    not_image = root / "notes.png"
    not_image.write_text("this is text")
    release_dir = root / "a-release"
    release_dir.mkdir()
    recipe = root / "typo.yaml"
    recipe.write_text(f"model: {{factory: {{family: idefics3}}}}\ndata: {{source: {shapes_dir}}}\n"
                      "optim: {learning_rate: fast}\n")
    png = sorted((shapes_dir / "images" / "test").glob("*.png"))[0]
    refs = shapes_dir / "annotations" / "captions_test.json"
    huge = root / "huge-caption.json"  # one 1 MB caption: it used to kill the METEOR JVM mid-run
    huge.write_text(json.dumps([{"image_id": im["id"], "caption": "a red circle " * (80_000 if i == 0 else 1)}
                                for i, im in enumerate(json.loads(refs.read_text())["images"])]))
    return {"model": tiny_models["idefics3"], "no_config": no_config, "train_out": train_out, "recipe": recipe,
            "png": png, "data": shapes_dir, "refs": refs, "huge": huge, "a_file": a_file, "out": root / "out",
            "not_image": not_image, "release_dir": release_dir, "blip": tiny_models["blip"]}


ROWS = [
    ("caption", ["{png}", "--model", "{model}", "--device", "cuda"], "--device cuda: no CUDA GPU here"),
    ("caption", ["{png}", "--model", "{model}", "--device", "warp"], "--device 'warp' is not a torch device"),
    ("caption", ["{png}", "--model", "{no_config}"], "no config.json there, so it is not a saved model"),
    ("caption", ["{png}", "--model", "{out}/missing"], "no such folder"),
    ("eval", ["generate", "--model", "{model}", "--dataset", "{data}", "--split", "test", "--out", "{out}/g",
              "--device", "cuda"], "--device cuda: no CUDA GPU here"),
    ("eval", ["generate", "--model", "{no_config}", "--dataset", "{data}", "--split", "test", "--out", "{out}/g"],
     "no config.json there"),
    ("eval", ["compare", "{train_out}"], "is a training record (validation during training), not an eval record"),
    ("eval", ["reproduce", "someone/not-cached"], "HF_HUB_OFFLINE is set and it is not cached"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{huge}", "--out", "{out}/m.json"],
     "characters long: captions over 10,000 are refused"),
    # an --out that cannot be written is found before the model loads (and the work is lost)
    ("eval", ["generate", "--model", "{model}", "--dataset", "{data}", "--split", "test", "--out", "{a_file}/sub"],
     "a-file is a file, not a folder"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{huge}", "--out", "{a_file}/m.json"],
     "a-file is a file, not a folder"),
    ("train", ["--config", "{recipe}"], "typo.yaml: optim.learning_rate: expected a number, got 'fast'"),
    ("train", ["--model.name_or_path", "{model}", "--data.source", "{data}", "--output-dir", "{a_file}/run"],
     "a-file is a file, not a folder"),
    ("caption", ["{png}", "--model", "{model}", "--max-new-tokens", "0"], "--max-new-tokens: 0 must be at least 1"),
    ("shapes", ["--out", "{a_file}/shapes"], "--out {a_file}/shapes: {a_file} is a file, not a folder"),
    ("caption", ["{png}", "--model", "{model}", "--max-pixels", "100"], "over the limit of 100;"),
    ("caption", ["{png}", "--model", "{model}", "--max-pixels", "0"], "--max-pixels must be a positive number"),
    # an image refused mid-run: the journal keeps the work done (here none) so the run resumes
    ("eval", ["generate", "--model", "{model}", "--dataset", "{data}", "--split", "test", "--out", "{out}/journal",
              "--max-pixels", "100"], "over the limit of 100; shrink the image or raise the limit (--max-pixels"),
    ("train", ["--model.name_or_path", "{model}", "--data.source", "{data}", "--output-dir", "{out}/t",
               "--data.max_pixels", "0"], "data.max_pixels must be a positive number"),
    ("release", ["push", "--repo-id", "ns/x", "--model", "{model}", "--to-dir", "{a_file}/rel"],
     "--to-dir {a_file}/rel: {a_file} is a file, not a folder"),
    ("train", ["--model.name_or_path", "{model}", "--data.source", "{data}", "--optim.lr", "1"],
     "did you mean --optim.learning_rate"),
    ("release", ["push", "--repo-id", "ns/x", "--model", "{model}", "--eval", "{train_out}", "--to-dir",
                 "{out}/rel"], "is a training record (validation during training), not an eval record"),
    # more of every entry point
    ("eval", ["score", "--references", "{out}/none.json", "--predictions", "{huge}"], "references file not found"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{refs}"], "must be a COCO results list"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{huge}", "--metrics", "BLEU5"],
     "unknown metric 'BLEU5'"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{huge}", "--out", "{data}"], "is a folder"),
    ("eval", ["generate", "--model", "{model}", "--dataset", "{data}", "--split", "test", "--out", "{out}/g",
              "--batch-size", "0"], "--batch-size"),
    ("eval", ["generate", "--model", "{model}", "--dataset", "{data}", "--split", "test", "--out", "{out}/g",
              "--caption-transform", "shout"], "--caption-transform: invalid choice"),
    ("eval", ["generate", "--model", "{model}", "--dataset", "{data}", "--split", "nope", "--out", "{out}/g"],
     "nope"),
    ("eval", ["generate", "--model", "{model}", "--dataset", "{out}/no-data", "--split", "test", "--out",
              "{out}/g"], "no-data"),
    ("eval", ["compare", "{out}/nothing-here"], "no such file"),
    ("eval", ["reproduce", "{release_dir}"], "no metrics.json in this folder"),
    ("eval", ["generate", "--model", "{model}"], "the following arguments are required"),
    ("train", ["--config", "{out}/no-recipe.yaml"], "--config"),
    ("train", ["--model.name_or_path", "{model}", "--data.source", "{data}", "--optim.per_device_train_batch_size",
               "many"], "--optim.per_device_train_batch_size: expected an integer"),
    ("train", ["--model.name_or_path", "{no_config}", "--data.source", "{data}", "--output-dir", "{out}/t2"],
     "no-config"),
    ("train", ["--model.name_or_path", "{model}", "--data.source", "{out}/no-data", "--output-dir", "{out}/t3"],
     "no-data"),
    ("train", ["--model.name_or_path", "{model}", "--data.source", "{data}", "--output-dir", "{out}/t4", "--resume"],
     "holds no checkpoint"),
    ("release", ["merge", "--adapter", "{model}", "--out", "{out}/m"], "already merged"),
    ("release", ["merge", "--adapter", "{out}/no-adapter", "--out", "{out}/m"], "no such folder"),
    ("release", ["push", "--repo-id", "ns/x", "--adapter", "{model}", "--model", "{model}", "--to-dir", "{out}/r"],
     "exactly one of --adapter"),
    ("release", ["push", "--repo-id", "ns/x", "--model", "{model}", "--merge", "--to-dir", "{out}/r"],
     "--merge needs --adapter"),
    ("release", ["push", "--repo-id", "not a repo id", "--model", "{model}", "--to-dir", "{out}/r"], "repo"),
    ("release", ["push", "--repo-id", "ns/x", "--model", "{model}", "--eval", "{out}/no-eval", "--to-dir",
                 "{out}/r"], "--eval"),
    ("release", ["card", "--model", "{out}/no-model", "--out", "{out}/README.md"], "no such folder"),
    ("caption", ["{out}/missing.png", "--model", "{model}"], "missing.png"),
    ("caption", ["{not_image}", "--model", "{model}"], "not an image file"),
    ("caption", ["{png}", "--model", "{model}", "--num-beams", "0"], "beams"),
    ("shapes", ["--out", "{out}/s", "--train", "-1"], "--train"),
    ("shapes", ["--out", "{out}/s", "--size", "big"], "--size"),
    ("factory", ["--family", "nope", "--out", "{out}/f"], "--family: invalid choice"),
    ("factory", ["--family", "blip", "--out", "{a_file}/f"], "--out {a_file}/f: {a_file} is a file, not a folder"),
    ("space", ["--models", "{model}", "--max-pixels", "0"], "--max-pixels must be a positive number"),
    ("shapes", ["--out", "{out}/s0", "--train", "0", "--val", "0", "--test", "0"], "are all 0: nothing to write"),
    ("release", ["card", "--model", "{model}", "--license", "Not A Licence", "--out", "{out}/card.md"],
     "'Not A Licence' is not a licence identifier"),
]


@pytest.mark.parametrize("entry, argv, fragment", ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_a_mistake_is_one_line_and_exit_2(entry, argv, fragment, places, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = [a.format(**places) for a in argv]
    before = sorted(p for p in places["out"].rglob("*")) if places["out"].exists() else []
    assert _main(entry)(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ") or line.startswith("Error: ")]
    assert len(lines) == 1 and fragment.format(**places) in lines[0], err
    after = sorted(p for p in places["out"].rglob("*") if "journal" not in p.parts) if places["out"].exists() else []
    assert after == [p for p in before if "journal" not in p.parts]  # nothing written, nothing half-written


def test_captions_print_as_text_a_terminal_can_show(places, monkeypatch, capsys):
    """An untrained model's caption can hold BEL or ESC: printed escaped, never raw."""
    from captioning import caption

    monkeypatch.setattr("captioning.generation.caption_images", lambda *a, **k: [["a\x07b\x1b[2Jc\td é"]])
    assert caption.main([str(places["png"]), "--model", str(places["model"])]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"{places['png']}\ta\\x07b\\x1b[2Jc\\td é"


def test_max_images_beyond_the_split_is_said(places, capsys, tmp_path):
    from eval.run import main

    assert main(["generate", "--model", str(places["model"]), "--dataset", str(places["data"]), "--split", "test",
                 "--max-images", "100000", "--max-new-tokens", "2", "--metrics", "Bleu", "--no-progress",
                 "--no-report", "--out", str(tmp_path / "g")]) == 0
    assert "note: --max-images 100000, but split 'test'" in capsys.readouterr().err
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["n_images"] == 16
