"""Generated bad inputs (issue 28, item 6): every file kind the toolkit reads, mutated every
way that makes sense, through every command that reads it; every numeric flag at its
boundaries; every output location made unwritable.

A case runs an entry point's ``main(argv)`` on copies of files built once for the module (a
2-step LoRA training output, its merge, an eval of it, a release folder, a small COCO dataset,
image folders, a journal, a Space models.yaml) and checks the contract README.md states: a
mistake or a damaged file is exit code 2 and one line ``error: ...``, never a traceback, and
leaves nothing behind: no new file (hidden partial or temp files and locks included) under the
case's folder, and earlier outputs put where the command would write keep their bytes.

Cases run in this process under a SIGALRM deadline, except those that may block or spin in
native code, where no signal reaches (a FIFO opened by Rust, megabyte strings, deep nesting,
an alias bomb, 1e12 settings): those run in a fork, killed at the deadline
(:func:`tests.mutations.run_entry`).

What each case expects (:func:`expect_for_file`, :func:`expect_for_leaf`, :func:`expect_for_flag`):

- ``refuse``: exit 2, one ``error:`` line, nothing written, nothing changed;
- ``same``: what the unmutated input gives (a UTF-8 BOM is accepted everywhere);
- ``ok``: exit 0 (an optional file missing; a torn journal, which resumes by design);
- ``refuse_or_same``: a value replaced inside a record is refused, or (a key this command does
  not read) changes nothing at all; ``refuse_or_missing``: a folder, FIFO or symlink loop where
  an optional file may be is refused, or treated as that file missing;
- ``clean``: refused in one line or run to the end (exit 0): a null where records write null for
  "not recorded", a value of the declared type that may be out of range, a flag value the
  declaration allows (the run itself may still refuse it: a merge check a tolerance of 0 fails).

A FIFO, a symlink loop, nesting 100,000 deep and a YAML alias bomb must end within
:data:`tests.mutations.QUICK_S` seconds. Budget (the module runs in under 4 minutes on 2 shared
cores): each file kind gets every mutation and the leaf walk through one command (``full``),
every other command reading it the :data:`CORE` mutations.

``GENERATED_INPUTS_LOG=FILE`` appends one JSON line per case (what came out, why it failed),
from which the failure report is grouped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import mutations as mu
from tests.test_bad_inputs import _main  # the one table of entry points the bad-input tests call

LOG = os.environ.get("GENERATED_INPUTS_LOG")
#: seconds a case may run (a model-loading case takes well under one)
DEADLINE_S = 6.0
NUMERIC_DEADLINE_S = 4.0


# =========================================================================== entry points


# =========================================================================== the world


@dataclass
class World:
    """The real files every case copies and mutates (built once for the module)."""

    root: Path
    base: Path  # the session's tiny idefics3 model (never written)
    shapes: Path  # the session's shapes set (never written)
    data: Path  # 4 test images of the shapes set, as a COCO folder
    png: Path
    adapter: Path  # training output of a 2-step LoRA run (with checkpoints/)
    recipe: dict  # the recipe it was trained with (output.dir replaced per case)
    merged: Path  # release merge of the adapter
    eval_merged: Path  # eval/run.py generate --out of the merged model
    release: Path  # release push --to-dir of merged + its eval
    imgs_jsonl: Path  # image folder with metadata.jsonl
    imgs_csv: Path  # image folder with metadata.csv
    journal: bytes  # a killed generate's journal (its first batch done), for eval_merged's settings
    models_yaml: bytes

    @property
    def gen(self) -> list[str]:
        """The generate flags eval_merged was made with (same settings: it resumes)."""
        return ["--dataset", str(self.data), "--split", "test", "--max-new-tokens", "2", "--metrics", "Bleu",
                "--no-progress", "--no-report", "--batch-size", "2"]

    def gen_small(self, dataset: Path | None = None, split: str = "test") -> list[str]:
        return ["--dataset", str(dataset or self.data), "--split", split, "--max-images", "2", "--max-new-tokens",
                "2", "--metrics", "Bleu", "--no-progress", "--no-report"]


def _run_ok(entry: str, argv: list[str]) -> None:
    rc = _main(entry)([str(a) for a in argv])
    assert rc == 0, f"building the module's files: {entry} {argv} -> {rc}"


def _small_coco(shapes: Path, out: Path, n: int = 4) -> Path:
    refs = json.loads((shapes / "annotations" / "captions_test.json").read_text())
    images = refs["images"][:n]
    ids = {im["id"] for im in images}
    (out / "annotations").mkdir(parents=True)
    (out / "images" / "test").mkdir(parents=True)
    for im in images:
        shutil.copy(shapes / "images" / im["file_name"], out / "images" / im["file_name"])
    doc = {"info": {"description": "4 images of the shapes set"}, "licenses": [], "images": images,
           "annotations": [a for a in refs["annotations"] if a["image_id"] in ids]}
    (out / "annotations" / "captions_test.json").write_text(json.dumps(doc, indent=1))
    return out


def _image_folder(data: Path, out: Path, fmt: str) -> Path:
    out.mkdir(parents=True)
    refs = json.loads((data / "annotations" / "captions_test.json").read_text())
    rows = []
    for im in refs["images"]:
        name = Path(im["file_name"]).name
        shutil.copy(data / "images" / im["file_name"], out / name)
        caps = [a["caption"] for a in refs["annotations"] if a["image_id"] == im["id"]]
        rows.append((name, caps))
    if fmt == "jsonl":
        lines = [{"file_name": n, "caption": c[0]} if i % 2 else {"file_name": n, "captions": c[:2]}
                 for i, (n, c) in enumerate(rows)]
        (out / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    else:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file_name", "caption"])
        for n, c in rows:
            w.writerow([n, c[0]])
        (out / "metadata.csv").write_text(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, shapes_dir) -> World:
    import yaml

    from tests.training.helpers import tiny_recipe

    root = tmp_path_factory.mktemp("generated-inputs")
    base = tiny_models["idefics3"]
    data = _small_coco(shapes_dir, root / "data4")
    png = sorted((data / "images" / "test").glob("*.png"))[0]

    adapter = root / "train-out"
    recipe = tiny_recipe(base, shapes_dir, adapter)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    _run_ok("train", ["--config", root / "recipe.yaml"])

    merged = root / "merged"
    _run_ok("release", ["merge", "--adapter", adapter, "--out", merged, "--probes", "1", "--max-new-tokens", "2"])
    w = World(root=root, base=base, shapes=shapes_dir, data=data, png=png, adapter=adapter, recipe=recipe,
              merged=merged, eval_merged=root / "eval-merged", release=root / "release",
              imgs_jsonl=_image_folder(data, root / "imgs-jsonl", "jsonl"),
              imgs_csv=_image_folder(data, root / "imgs-csv", "csv"), journal=b"", models_yaml=b"")
    _run_ok("eval", ["generate", "--model", merged, *w.gen, "--out", w.eval_merged])
    _run_ok("release", ["push", "--repo-id", "tests/tiny-ft", "--model", merged, "--eval", w.eval_merged,
                        "--to-dir", w.release])

    # the journal a generate killed after its first batch leaves (eval/journal.py's format)
    record = json.loads((w.eval_merged / "metrics.json").read_text())
    preds = json.loads((w.eval_merged / "predictions.json").read_text())
    fp = record["fingerprint"]
    size = fp["settings"]["batch_size"]
    lines = [{"journal": 1, "fingerprint": fp["sha256"], "settings": fp["settings"]},
             {"batch": 0, "image_ids": [p["image_id"] for p in preds[:size]],
              "captions": [p["caption"] for p in preds[:size]]}]
    w.journal = "".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in lines).encode()
    w.models_yaml = yaml.safe_dump({"models": [str(base), {"id": str(w.release), "name": "tiny fine-tune"}]},
                                   sort_keys=False).encode()
    return w


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("CAPTION_MODELS", raising=False)


# =========================================================================== cases


@dataclass
class Case:
    """One command line on files in a case folder."""

    entry: str
    argv: list
    file: Path | None = None  # the input file mutated
    sentinels: list = field(default_factory=list)  # earlier outputs that must keep their bytes
    patch: Callable | None = None  # (monkeypatch) -> None, e.g. the Space's models.yaml
    #: paths under the case folder a refused run may leave by design (relative, as a predicate)
    by_design: Callable[[str], bool] | None = None


def _copy(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip) if skip else None, symlinks=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def _sentinel(path: Path, text: str) -> Path:
    """An earlier output the command would replace: it must survive a refused run intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _journal_left(rel: str) -> bool:
    # README: "An unreadable image stops generate, naming the file (the run resumes once it is
    # fixed)": the --out folder and its journal stay on purpose
    return rel in ("out", "out/predictions.partial.jsonl")


def _recipe_file(w: World, case: Path, **over) -> Path:
    import yaml

    from tests.training.helpers import merge

    recipe = merge(merge(w.recipe, over), {"output": {"dir": str(case / "run")}})
    path = case / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ---- builders: (world, case folder) -> Case; ``which`` names the file mutated inside a copy


def b_compare(w, c):
    run = _copy(w.eval_merged, c / "run")
    return Case("eval", ["compare", w.eval_merged, run], run / "metrics.json")


def b_card_metrics(w, c):
    model, ev = _copy(w.merged, c / "model"), _copy(w.eval_merged, c / "eval")
    out = _sentinel(c / "card" / "README.md", "an earlier card\n")
    return Case("release", ["card", "--model", model, "--metrics", ev / "metrics.json", "--out", out,
                            "--repo-id", "tests/tiny-ft"], ev / "metrics.json", [out])


def b_push_eval(w, c):
    model, ev = _copy(w.merged, c / "model"), _copy(w.eval_merged, c / "eval")
    old = _sentinel(c / "rel" / "README.md", "an earlier release\n")
    return Case("release", ["push", "--repo-id", "tests/tiny-ft", "--model", model, "--eval", ev, "--to-dir",
                            c / "rel", "--force"], ev / "metrics.json", [old])


def b_reproduce(which):
    def build(w, c):
        rel = _copy(w.release, c / "rel")
        return Case("eval", ["reproduce", rel, "--dataset", w.data, "--no-progress", "--out", c / "repro"],
                    rel / which)
    return build


def b_resume_eval(which):
    def build(w, c):
        out = _copy(w.eval_merged, c / "out")
        return Case("eval", ["generate", "--model", w.merged, *w.gen, "--out", out], out / which,
                    [out / "predictions.json", out / "metrics.json"])
    return build


def b_journal(w, c):
    out = c / "out"
    out.mkdir()
    (out / "predictions.partial.jsonl").write_bytes(w.journal)
    return Case("eval", ["generate", "--model", w.merged, *w.gen, "--out", out], out / "predictions.partial.jsonl")


def b_merge(which):
    def build(w, c):
        ad = _copy(w.adapter, c / "adapter", skip=("checkpoints", "logs"))
        olds = [_sentinel(c / "merged" / "config.json", "{}\n"), _sentinel(c / "merged" / "old.txt", "old\n")]
        return Case("release", ["merge", "--adapter", ad, "--out", c / "merged", "--force", "--probes", "1",
                                "--max-new-tokens", "2"], ad / which, olds)
    return build


def b_merge_base(w, c):
    """release merge of an adapter whose base (named in adapter_config.json and train_config.yaml)
    is a copy in the case folder: the base's config.json is the file mutated. Same weights, so the
    training record's base fingerprint still matches."""
    case = b_merge("adapter_config.json")(w, c)
    base = _copy(w.base, c / "base")
    for name in ("adapter_config.json", "train_config.yaml"):
        p = c / "adapter" / name
        p.write_text(p.read_text().replace(str(w.base), str(base)))
    case.file = base / "config.json"
    return case


def b_card_model(src: str, which):
    def build(w, c):
        model = _copy(getattr(w, src), c / "model", skip=("checkpoints",))
        out = _sentinel(c / "card" / "README.md", "an earlier card\n")
        return Case("release", ["card", "--model", model, "--out", out, "--repo-id", "tests/tiny-ft"], model / which,
                    [out])
    return build


def b_push_model(src: str, which):
    def build(w, c):
        model = _copy(getattr(w, src), c / "model")
        old = _sentinel(c / "rel" / "README.md", "an earlier release\n")
        return Case("release", ["push", "--repo-id", "tests/tiny-ft", "--model", model, "--to-dir", c / "rel",
                                "--force"], model / which, [old])
    return build


def b_push_adapter(which):
    def build(w, c):
        ad = _copy(w.adapter, c / "adapter", skip=("checkpoints",))
        old = _sentinel(c / "rel" / "README.md", "an earlier release\n")
        return Case("release", ["push", "--repo-id", "tests/tiny-ft", "--adapter", ad, "--merge", "--probes", "1",
                                "--to-dir", c / "rel", "--force"], ad / which, [old])
    return build


def b_generate_model(src: str, which):
    def build(w, c):
        model = _copy(getattr(w, src), c / "model", skip=("checkpoints", "logs"))
        old = _sentinel(c / "out" / "notes.txt", "an earlier file in --out\n")
        return Case("eval", ["generate", "--model", model, *w.gen_small(), "--out", c / "out"], model / which, [old])
    return build


def b_caption(src: str, which):
    def build(w, c):
        model = _copy(getattr(w, src), c / "model", skip=("checkpoints", "logs"))
        return Case("caption", [w.png, "--model", model, "--max-new-tokens", "2"], model / which)
    return build


def b_resume_train(which):
    def build(w, c):
        run = _copy(w.adapter, c / "run")
        recipe = _recipe_file(w, c)
        return Case("train", ["--config", recipe, "--resume"], run / which,
                    [run / "adapter_model.safetensors", run / "metrics.json"])
    return build


def b_recipe_train(w, c):
    recipe = _recipe_file(w, c, optim={"max_steps": 1}, output={"tensorboard": False})
    return Case("train", ["--config", recipe], recipe)


def b_recipe_print(w, c):
    recipe = _recipe_file(w, c)
    return Case("train", ["--config", recipe, "--print-config"], recipe)


def b_config_again(w, c):
    cfg = _copy(w.adapter / "train_config.yaml", c / "train_config.yaml")
    return Case("train", ["--config", cfg, "--print-config"], cfg)


def b_score(which):
    def build(w, c):
        refs = _copy(w.data / "annotations" / "captions_test.json", c / "refs.json")
        preds = _copy(w.eval_merged / "predictions.json", c / "preds.json")
        out = _sentinel(c / "m.json", '{"an": "earlier metrics.json"}\n')
        return Case("eval", ["score", "--references", refs, "--predictions", preds, "--metrics", "Bleu", "--out", out],
                    c / which, [out])
    return build


def b_generate_data(which):
    def build(w, c):
        data = _copy(w.data, c / "data")
        old = _sentinel(c / "out" / "notes.txt", "an earlier file in --out\n")
        return Case("eval", ["generate", "--model", w.base, *w.gen_small(data), "--out", c / "out"], data / which,
                    [old], by_design=_journal_left)
    return build


def b_train_data(which):
    def build(w, c):
        data = _copy(w.data, c / "data")
        recipe = _recipe_file(w, c, data={"source": str(data), "train_split": "test", "val_split": "test",
                                          "max_train_samples": 4},
                              optim={"max_steps": 1, "per_device_train_batch_size": 2},
                              output={"tensorboard": False})
        return Case("train", ["--config", recipe], data / which)
    return build


def b_generate_imgfolder(src: str, which):
    def build(w, c):
        data = _copy(getattr(w, src), c / "imgs")
        old = _sentinel(c / "out" / "notes.txt", "an earlier file in --out\n")
        return Case("eval", ["generate", "--model", w.base, *w.gen_small(data, "train"), "--out", c / "out"],
                    data / which, [old], by_design=_journal_left)
    return build


def b_caption_image(w, c):
    img = _copy(w.png, c / "image.png")
    return Case("caption", [img, "--model", w.base, "--max-new-tokens", "2"], img)


def _space_yaml_patch(path: Path):
    def patch(mp):
        from tests.space.helpers import load_app_module

        app = load_app_module()
        from caption_space.models import configured_models

        mp.setattr(app, "configured_models", functools.partial(configured_models, yaml_path=path))
    return patch


def b_space_yaml(w, c):
    path = c / "models.yaml"
    path.write_bytes(w.models_yaml)
    return Case("space", [], path, patch=_space_yaml_patch(path))


def b_space_model(src: str, which):
    def build(w, c):
        model = _copy(getattr(w, src), c / "model")
        return Case("space", ["--models", model], model / which)
    return build


# =========================================================================== targets


@dataclass
class Target:
    """A file kind read by one command."""

    kind: str
    command: str
    fmt: str
    build: Callable[[World, Path], Case]
    #: the command runs without the file (it is absent in some legitimate inputs)
    optional: bool = False
    #: the whole set of file mutations (else :data:`CORE`)
    full: bool = False
    #: walk the parsed document's leaves: None = every leaf, N = at most N, spread over the document
    #: (type swaps); ``numbers``: the same for NaN/infinities on number leaves; one leaf takes the
    #: 1,000,000-character string
    leaves: int | None | bool = False
    numbers: int | None = 0
    #: the dataclass declaring the document's types (train configs), and whether the command reading it
    #: is the config's own parser (a wrong type is then refused, never ignored)
    typed: str | None = None
    #: whole-file mutations that are accepted by design: name -> why
    accept: dict = field(default_factory=dict)
    #: whole-file mutations that give a valid file or a damaged one depending on where the cut
    #: falls (the fixture's paths vary in length): refused in one line, or accepted: name -> why
    either: dict = field(default_factory=dict)
    #: why the command goes on, by design, whatever the file holds (None: it must refuse a damaged one)
    tolerant: str | None = None
    #: why a UTF-8 BOM is refused for this file (None: accepted like the file without it)
    bom_refused: str | None = None
    #: why a leaf of another type is taken as it is (None: refused, or without effect)
    types_unchecked: str | None = None

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.command}"


_TORN = ("eval/journal.py: a line torn by a kill (a truncated or empty journal) is cut off and the run resumes "
         "from what is intact")

#: the Space serves a model whose card files (metrics.json, train_config.yaml) cannot be read, with a
#: note in its card instead of the numbers (space/caption_space/models.py, ``_read``): by design
_SPACE_NOTES = "the Space notes an unreadable card file and serves the model (caption_space/models.py _read)"
#: the Space serves every model that exists and says why one cannot load when it is picked
_SPACE_LAZY = "the Space loads models when they are picked and serves the others (caption_space/models.py _checked)"
#: a journal whose header or a line cannot be read is started again from the last readable line
_JOURNAL = "eval/journal.py: a damaged line keeps the batches before it (a damaged header: none) and the run goes on"
#: a shorter file that is still a valid one is what it says
_SHORTER = "cut at a line end, the file is a valid shorter one"
#: transformers and peft cannot read these with a BOM: refused in one line (captioning.files.check_model_folder)
_LIBRARY_BOM = "transformers and peft read this file and cannot read a BOM"
#: known gap (closing note of issue 28): the card shows train_config.yaml's values as recorded; their
#: peft reads adapter_config.json's options itself (an option object it does not use is ignored)
_PEFT_OPTIONS = "peft's own options, read by peft"
#: push publishes the files the folder holds; the merge check loaded the model with them
_PUSH_AS_IS = "a model folder may lack it (tokenizer.json alone serves); push publishes what is there"

# Budget (the whole module runs in under 4 minutes on 2 shared cores): each file kind gets the
# full set of mutations and the leaf walk through one command, its "primary" reader (the cheapest
# that reads the whole document, or the one that uses it most); every other command that reads
# the kind gets the core mutations (CORE: absent, unparsable, BOM, wrong type, a folder, a FIFO),
# because the reader is the same records function and what differs is how the command handles it.
P = dict(full=True)
#: files transformers and peft read (their BOM is refused)
L = dict(bom_refused=_LIBRARY_BOM)

TARGETS = [
    # ---- eval records (metrics.json of eval/run.py generate)
    Target("metrics_eval", "compare", "json", b_compare, leaves=16, numbers=6, **P),
    Target("metrics_eval", "card", "json", b_card_metrics, leaves=6, numbers=3, **P),
    Target("metrics_eval", "push", "json", b_push_eval),
    Target("metrics_eval", "reproduce", "json", b_reproduce("metrics.json")),
    Target("metrics_eval", "resume", "json", b_resume_eval("metrics.json")),
    # ---- training records (metrics.json of a training output)
    Target("metrics_training", "merge", "json", b_merge("metrics.json"), optional=True, leaves=3, numbers=1, **P),
    Target("metrics_training", "card", "json", b_card_model("adapter", "metrics.json"), optional=True),
    Target("metrics_training", "resume", "json", b_resume_train("metrics.json"), optional=True),
    # ---- merge_check.json, release.json
    Target("merge_check", "card", "json", b_card_model("merged", "merge_check.json"), optional=True, leaves=6,
           numbers=2, **P),
    Target("merge_check", "push", "json", b_push_model("merged", "merge_check.json"), optional=True),
    Target("release_json", "card", "json", b_card_model("release", "release.json"), optional=True, leaves=6,
           numbers=2, **P),
    Target("release_json", "push", "json", b_push_model("release", "release.json"), optional=True),
    # ---- train_config.yaml (the resolved config that travels with a model)
    Target("train_config", "card", "yaml", b_card_model("adapter", "train_config.yaml"), optional=True, leaves=6,
           numbers=2, typed="record", **P),
    Target("train_config", "as_recipe", "yaml", b_config_again, leaves=5, numbers=2, typed="parser"),
    Target("train_config", "merge", "yaml", b_merge("train_config.yaml"), optional=True),
    Target("train_config", "generate", "yaml", b_generate_model("adapter", "train_config.yaml"), optional=True),
    Target("train_config", "caption", "yaml", b_caption("adapter", "train_config.yaml"), optional=True, leaves=2,
           numbers=0, typed="record"),
    # not optional here: without it a merged model's records name its base by a path of this
    # machine, which push refuses to publish
    Target("train_config", "push", "yaml", b_push_model("merged", "train_config.yaml")),
    Target("train_config", "resume", "yaml", b_resume_train("checkpoints/train_config.yaml"), optional=True),
    Target("train_config", "space", "yaml", b_space_model("release", "train_config.yaml"), optional=True,
           tolerant=_SPACE_NOTES),
    # ---- training recipes
    Target("recipe", "print_config", "yaml", b_recipe_print, leaves=6, numbers=2, typed="parser",
           either={"truncated": "half a recipe is a recipe with fewer settings when the cut falls at a line end "
                                "(an empty section means its defaults), a damaged one otherwise"}, **P),
    Target("recipe", "train", "yaml", b_recipe_train),
    # ---- model folder files
    Target("adapter_config", "caption", "json", b_caption("adapter", "adapter_config.json"), leaves=4, numbers=1,
           types_unchecked=_PEFT_OPTIONS, **P, **L),
    Target("adapter_config", "card", "json", b_card_model("adapter", "adapter_config.json"), **L),
    Target("adapter_config", "merge", "json", b_merge("adapter_config.json"), **L),
    Target("adapter_config", "generate", "json", b_generate_model("adapter", "adapter_config.json"), **L),
    Target("adapter_config", "push", "json", b_push_adapter("adapter_config.json"), **L),
    Target("config_json", "caption", "json", b_caption("base", "config.json"), leaves=6, numbers=3, **P, **L),
    Target("config_json", "generate", "json", b_generate_model("base", "config.json"), **L),
    Target("config_json", "card", "json", b_card_model("merged", "config.json"), **L),
    Target("config_json", "push", "json", b_push_model("merged", "config.json"), **L),
    Target("config_json", "merge_base", "json", b_merge_base, **L),
    Target("config_json", "space", "json", b_space_model("base", "config.json"), tolerant=_SPACE_LAZY),
    Target("model_safetensors", "caption", "safetensors", b_caption("base", "model.safetensors"), **P),
    Target("model_safetensors", "generate", "safetensors", b_generate_model("base", "model.safetensors")),
    # a card renders without weights (its parameter count then says "not known")
    Target("model_safetensors", "card", "safetensors", b_card_model("merged", "model.safetensors"), optional=True),
    Target("model_safetensors", "push", "safetensors", b_push_model("merged", "model.safetensors")),
    Target("adapter_safetensors", "caption", "safetensors", b_caption("adapter", "adapter_model.safetensors"), **P),
    Target("adapter_safetensors", "generate", "safetensors",
           b_generate_model("adapter", "adapter_model.safetensors")),
    Target("adapter_safetensors", "merge", "safetensors", b_merge("adapter_model.safetensors")),
    Target("adapter_safetensors", "card", "safetensors", b_card_model("adapter", "adapter_model.safetensors"),
           optional=True),
    Target("tokenizer_json", "caption", "json", b_caption("base", "tokenizer.json"), **P, **L),
    Target("tokenizer_json", "generate", "json", b_generate_model("base", "tokenizer.json"), **L),
    Target("tokenizer_config", "caption", "json", b_caption("base", "tokenizer_config.json"), leaves=3, numbers=1,
           **P, **L),
    Target("tokenizer_config", "push", "json", b_push_model("merged", "tokenizer_config.json"),
           accept={"missing": _PUSH_AS_IS}, **L),
    Target("processor_config", "caption", "json", b_caption("base", "processor_config.json"), leaves=3, numbers=1,
           **P, **L),
    Target("processor_config", "push", "json", b_push_model("merged", "processor_config.json"),
           accept={"missing": _PUSH_AS_IS}, **L),
    Target("generation_config", "caption", "json", b_caption("base", "generation_config.json"), optional=True,
           leaves=3, numbers=1, **P, **L),
    # ---- eval inputs
    Target("references", "score", "json", b_score("refs.json"), leaves=4, numbers=1, **P),
    Target("predictions", "score", "json", b_score("preds.json"), leaves=None, numbers=None, **P),
    Target("predictions", "resume", "json", b_resume_eval("predictions.json")),
    Target("predictions", "reproduce", "json", b_reproduce("predictions.json"), optional=True),
    Target("journal", "resume", "jsonl", b_journal, optional=True, leaves=3, numbers=1,
           accept={"truncated": _TORN, "empty": _TORN, "garbage": _JOURNAL, "not_utf8": _JOURNAL, "bom": _JOURNAL},
           **P),
    # ---- datasets
    Target("coco_annotations", "generate", "json", b_generate_data("annotations/captions_test.json"), leaves=3,
           numbers=1, **P),
    Target("coco_annotations", "train", "json", b_train_data("annotations/captions_test.json")),
    Target("dataset_image", "generate", "png", b_generate_data("images/test/__FIRST__"), **P),
    Target("dataset_image", "train", "png", b_train_data("images/test/__FIRST__")),
    Target("metadata_jsonl", "generate", "jsonl", b_generate_imgfolder("imgs_jsonl", "metadata.jsonl"), leaves=None,
           numbers=None, **P),
    Target("metadata_csv", "generate", "csv", b_generate_imgfolder("imgs_csv", "metadata.csv"),
           accept={"truncated": _SHORTER}, **P),
    Target("image", "caption", "png", b_caption_image, **P),
    # ---- the Space
    Target("models_yaml", "space", "yaml", b_space_yaml, leaves=None, numbers=None, accept={"truncated": _SHORTER},
           **P),
]
_BY_ID = {t.id: t for t in TARGETS}
assert len(_BY_ID) == len(TARGETS), "two targets share an id"


def build_case(target: Target, world: World, folder: Path) -> Case:
    """The target's case in ``folder``; a file named ``__FIRST__`` is the first image of its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    case = target.build(world, folder)
    if case.file is not None and case.file.name == "__FIRST__":
        case.file = sorted(case.file.parent.glob("*.png"))[0]
    return case


# =========================================================================== running and judging


_COMPARE_SKIP = ("logs/", "checkpoints/")


def _skip_compare(rel: str) -> bool:
    return any(part in rel + "/" for part in _COMPARE_SKIP) or rel.endswith(".tfevents")


@dataclass
class Judged:
    """A case's outcome and what was wrong with it (empty: it passed)."""

    outcome: mu.Outcome
    reasons: list[str]
    behaviour: dict | None = None


def _roots(case_dir: Path, world: World) -> dict[str, str]:
    return {str(case_dir): "<CASE>", str(world.root): "<WORLD>"}


def execute(case: Case, case_dir: Path, capsys, monkeypatch, *, seconds: float = DEADLINE_S,
            unreadable: bool = False, extra_argv: tuple = (), fork: bool = False) -> mu.Outcome:
    argv = [str(a) for a in case.argv] + list(extra_argv)
    with monkeypatch.context() as mp:
        mp.chdir(case_dir)
        if case.entry == "space":
            import gradio as gr

            mp.setattr(gr.Blocks, "launch", lambda self, *a, **k: None)  # build, never serve
        if case.patch is not None:
            case.patch(mp)
        return mu.run_entry(_main(case.entry), argv, capsys=capsys, watch=case_dir, sentinels=case.sentinels,
                            seconds=seconds, ignore=case.by_design,
                            unreadable_path=case.file if unreadable else None, fork=fork)


def _refusal_problems(o: mu.Outcome) -> list[str]:
    why = []
    if o.rc != 2:
        why.append(f"exit {o.rc}, expected 2 (refused)")
    lines = o.error_lines
    if o.rc == 2 and len(lines) != 1:
        why.append(f"{len(lines)} 'error: ' lines on stderr, expected exactly 1")
    if o.new:
        why.append(f"left behind: {o.new[:5]}")
    if o.changed or o.removed:
        why.append(f"changed: {o.changed[:5]} removed: {o.removed[:5]}")
    if o.sentinels_changed:
        why.append(f"earlier output changed: {o.sentinels_changed[:3]}")
    return why


def _crash_problems(o: mu.Outcome) -> list[str]:
    why = []
    if o.hung:
        why.append(f"hung: still running after {o.seconds:.0f} s")
    if o.exception:
        why.append(f"exception escaped main(): {o.exception} (raised at {o.raised_at})")
    if o.traceback_shown:
        why.append("a traceback was printed")
    if o.rc == 1 and any("internal error" in line for line in o.error_lines):
        why.append(f"internal error: {o.error_lines[0][:200]}")
    return why


def judge(expect: str, o: mu.Outcome, *, reference: dict | None, case_dir: Path, world: World,
          quick: bool = False) -> Judged:
    """The reasons ``o`` breaks expectation ``expect`` (see the module docstring)."""
    why = _crash_problems(o)
    if quick and o.seconds > mu.QUICK_S and not o.hung:
        why.append(f"slow: {o.seconds:.1f} s (must end within {mu.QUICK_S:g} s)")
    got = mu.behaviour(o, case_dir, _roots(case_dir, world), ignore=_skip_compare)
    if why:
        return Judged(o, why, got)
    if expect == "refuse" or (expect in ("refuse_or_same", "refuse_or_missing", "clean") and o.rc == 2):
        why += _refusal_problems(o)
    elif expect == "ok" or expect == "clean":
        if o.rc != 0:
            why.append(f"exit {o.rc}, expected 0 (accepted)" + (f": {o.error_lines[0][:200]}" if o.error_lines
                                                                  else ""))
        elif o.error_lines:
            why.append(f"exit 0 but stderr says {o.error_lines[0][:200]}")
    elif expect in ("same", "refuse_or_same", "refuse_or_missing"):
        if reference is None:
            why.append("no reference run")
        else:
            diff = mu.first_difference(reference, got)
            if diff:
                label = {"same": "differs from the unmutated input",
                         "refuse_or_same": "accepted (not refused) but behaves differently from the unmutated input",
                         "refuse_or_missing": "accepted but behaves differently from the file missing"}[expect]
                why.append(f"{label}: exit {o.rc}; {diff}")
    else:
        raise AssertionError(expect)
    return Judged(o, why, got)


_REFERENCES: dict[tuple[str, str], dict] = {}


def reference(target: Target, which: str, world: World, tmp_root: Path, capsys, monkeypatch) -> dict:
    """What the target's command does on the unmutated files (``baseline``) or with the file
    absent (``missing``), normalised; run once per module."""
    key = (target.id, which)
    if key not in _REFERENCES:
        folder = tmp_root / f"ref-{target.id}-{which}"
        shutil.rmtree(folder, ignore_errors=True)
        case = build_case(target, world, folder)
        if which == "missing":
            case.file.unlink()
        o = execute(case, folder, capsys, monkeypatch)
        _REFERENCES[key] = mu.behaviour(o, folder, _roots(folder, world), ignore=_skip_compare)
        _REFERENCES[key]["_outcome"] = o
    return {k: v for k, v in _REFERENCES[key].items() if k != "_outcome"}


def _debug_location(prepare: Callable[[Path], Case], folder: Path, capsys, monkeypatch, **how) -> str | None:
    """For an internal error (exit 1): the same case again with --debug, where the exception was raised."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    case = prepare(folder)
    o = execute(case, folder, capsys, monkeypatch, extra_argv=("--debug",), **how)
    return f"{o.exception} at {o.raised_in_repo} (innermost: {o.raised_at})" if o.exception else None


def record(case_id: str, expect: str, judged: Judged, **extra) -> None:
    if not LOG:
        return
    o = judged.outcome
    row = {"id": case_id, "expect": expect, "passed": not judged.reasons, "reasons": judged.reasons,
           "rc": o.rc, "error_lines": o.error_lines[:3], "stderr_tail": o.err[-600:], "exception": o.exception,
           "raised_at": o.raised_at, "raised_in_repo": o.raised_in_repo, "hung": o.hung,
           "seconds": round(o.seconds, 3), "new": o.new[:8], "changed": o.changed[:8], "removed": o.removed[:8],
           "sentinels_changed": o.sentinels_changed, **extra}
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def run_and_check(case_id: str, expect: str, prepare: Callable[[Path], Case], folder: Path, world: World, capsys,
                  monkeypatch, *, reference_run: dict | None = None, quick: bool = False, unreadable: bool = False,
                  seconds: float = DEADLINE_S, cleanup: bool = True, isolate: bool = False) -> None:
    """Prepare a case in ``folder``, run it, judge it, log it and assert it passed. ``isolate``:
    in a fork (inputs that may block or spin in native code, where no signal reaches)."""
    folder.mkdir(parents=True, exist_ok=True)
    case = prepare(folder)
    o = execute(case, folder, capsys, monkeypatch, seconds=mu.QUICK_S + 0.5 if quick else seconds,
                unreadable=unreadable, fork=isolate)
    judged = judge(expect, o, reference=reference_run, case_dir=folder, world=world, quick=quick)
    debug = None
    if o.rc == 1 and any("internal error" in line for line in o.error_lines):
        debug = _debug_location(prepare, folder.with_name(folder.name + "-debug"), capsys, monkeypatch,
                                seconds=mu.QUICK_S + 0.5 if quick else seconds, unreadable=unreadable, fork=isolate)
    record(case_id, expect, judged, debug=debug, argv=[str(a) for a in case.argv][:12])
    if cleanup:  # 50 MB inputs and model copies add up over a thousand cases
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder.with_name(folder.name + "-debug"), ignore_errors=True)
    assert not judged.reasons, (f"{case_id}: " + "; ".join(judged.reasons)
                                + f"\n  stderr: {o.err[-800:]!r}" + (f"\n  --debug: {debug}" if debug else ""))


# =========================================================================== whole-file mutations


def _original_bytes(target: Target, world: World, tmp_root: Path) -> bytes:
    """The bytes of the target's file as the command reads it unmutated (for mutations that
    depend on the document)."""
    key = ("bytes", target.id)
    if key not in _REFERENCES:
        folder = tmp_root / f"orig-{target.id}"
        shutil.rmtree(folder, ignore_errors=True)
        case = build_case(target, world, folder)
        _REFERENCES[key] = {"data": case.file.read_bytes()}
        shutil.rmtree(folder, ignore_errors=True)
    return _REFERENCES[key]["data"]


def expect_for_file(target: Target, mutation: str) -> str:
    if mutation in target.accept:
        return "ok"
    if mutation in target.either:
        return "clean"
    if target.tolerant:
        return "clean"
    if mutation == "bom":
        return "refuse" if target.bom_refused else "same"
    if mutation == "missing":
        return "ok" if target.optional else "refuse"
    if mutation in ("folder", "fifo", "symlink_loop") and target.optional:
        return "refuse_or_missing"
    if mutation == "huge_file":
        # a typed config's first text value made huge is still text: its type allows it (as for a leaf)
        return "clean" if target.typed else "refuse_or_same"
    return "refuse"


#: the mutations every command reading a kind gets (the primary reader gets them all)
CORE = ("missing", "empty", "garbage", "bom", "top_string", "folder", "fifo")


def _file_cases() -> list:
    params = []
    for t in TARGETS:
        for m in mu.mutations_for(t.fmt):
            if not t.full and m.name not in CORE:
                continue
            marks = []
            if m.name == "unreadable" and os.geteuid() == 0 and (t.fmt == "safetensors" or t.kind == "tokenizer_json"):
                marks.append(pytest.mark.skip(reason="root reads through mode bits, and this file is opened by Rust "
                                                     "(safetensors / tokenizers), which no Python-level patch reaches"))
            params.append(pytest.param(t.id, m.name, id=f"{t.id}-{m.name}", marks=marks))
    return params


@pytest.mark.parametrize("target_id, mutation", _file_cases())
def test_file_mutation(target_id, mutation, world, tmp_path, capsys, monkeypatch):
    target = _BY_ID[target_id]
    m = next(x for x in mu.FILE_MUTATIONS if x.name == mutation)
    if m.applies is not None and not m.applies(_original_bytes(target, world, tmp_path.parent), target.fmt):
        pytest.skip(f"{mutation} does not apply to this document")
    expect = expect_for_file(target, mutation)
    ref = None
    if expect in ("same", "refuse_or_same"):
        ref = reference(target, "baseline", world, tmp_path.parent, capsys, monkeypatch)
    elif expect == "refuse_or_missing":
        ref = reference(target, "missing", world, tmp_path.parent, capsys, monkeypatch)

    def prepare(folder: Path) -> Case:
        case = build_case(target, world, folder)
        mu.apply_file_mutation(m, case.file, target.fmt)
        return case

    run_and_check(f"{target.id}-{mutation}", expect, prepare, tmp_path / "case", world, capsys, monkeypatch,
                  reference_run=ref, quick=mutation in mu.QUICK, unreadable=mutation == "unreadable",
                  isolate=mutation in mu.ISOLATE)


@pytest.mark.parametrize("target_id", [t.id for t in TARGETS])
def test_baseline(target_id, world, tmp_path, capsys, monkeypatch):
    """Every target's command succeeds on the unmutated files (what ``same`` compares against)."""
    target = _BY_ID[target_id]
    first = reference(target, "baseline", world, tmp_path.parent, capsys, monkeypatch)
    o = _REFERENCES[(target.id, "baseline")]["_outcome"]
    judged = Judged(o, [] if first["rc"] == 0 and not o.exception and not o.hung else
                    [f"baseline failed: exit {o.rc} {o.exception or ''} {o.err[-300:]}"])
    record(f"{target.id}-baseline", "ok", judged)
    assert not judged.reasons, judged.reasons[0]


# =========================================================================== leaf mutations


def _hint_at(path: tuple) -> Any:
    """The declared type (TrainConfig's dataclasses) of the value at ``path``; Any when undeclared."""
    from training.config import TrainConfig

    hint: Any = TrainConfig
    for p in path:
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        nxt = Any
        for h in options:
            if isinstance(p, str) and dataclasses.is_dataclass(h):
                hints = typing.get_type_hints(h)
                if p in hints:
                    nxt = hints[p]
                    break
            if isinstance(p, int) and typing.get_origin(h) is list:
                nxt = typing.get_args(h)[0]
                break
        hint = nxt
        if hint is Any:
            return Any
    return hint


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (a parsed YAML value) is of declared type ``hint``: the rule the
    toolkit's readers of a record apply (training.recorded.fits); the parser targets hold the
    training parser (jsonargparse) to it too."""
    from training.recorded import fits

    return fits(hint, value)


def expect_for_leaf(target: Target, path: tuple, family: str, doc: Any, mutated: Any) -> str:
    """What a command must do with one leaf replaced (module docstring)."""
    if target.tolerant:
        return "clean"
    if family in mu.NUMBER_SWAPS:  # no setting or record value is meaningfully NaN or infinite
        return "refuse" if target.typed == "parser" else "refuse_or_same"
    if target.types_unchecked and family != "huge_string":
        return "clean"
    if target.typed:
        try:
            value = mu.get_at(mutated, path)
        except (KeyError, IndexError, TypeError):
            return "clean"
        if _accepts(_hint_at(path), value):
            return "clean"
        return "refuse" if target.typed == "parser" else "refuse_or_same"
    if family == "as_null":  # records write null for "not recorded" throughout
        return "clean"
    return "refuse_or_same"


def _leaf_cases() -> list:
    return [pytest.param(t.id, fam, id=f"{t.id}-{fam}") for t in TARGETS if t.leaves is not False
            for fam in mu.LEAF_FAMILIES if not (fam in mu.NUMBER_SWAPS and t.numbers == 0)]


def _leaf_sample(target: Target, family: str, doc: Any) -> list:
    """The leaves of ``doc`` that take ``family``, as many as the target walks."""
    paths = [(p, v) for p, v in mu.leaves(doc) if mu.type_swap(v, family)[0]]
    cap = target.numbers if family in mu.NUMBER_SWAPS else (1 if family == "huge_string" else target.leaves)
    return mu.spread(paths, cap)


@pytest.mark.parametrize("target_id, family", _leaf_cases())
def test_leaf_mutation(target_id, family, world, tmp_path, capsys, monkeypatch, subtests):
    """One leaf of the document replaced (a subtest per leaf): its type, NaN/infinities for
    numbers, a 1,000,000-character string for text."""
    target = _BY_ID[target_id]
    data = _original_bytes(target, world, tmp_path.parent)
    doc = mu.parse(data, target.fmt)
    paths = _leaf_sample(target, family, doc)
    if not paths:
        pytest.skip(f"no leaf takes {family}")
    baseline = reference(target, "baseline", world, tmp_path.parent, capsys, monkeypatch)
    for n, (path, value) in enumerate(paths):
        name = mu.path_name(path)
        with subtests.test(key=name):
            replacement = mu.type_swap(value, family)[1]
            mutated = mu.set_at(doc, path, replacement)
            expect = expect_for_leaf(target, path, family, doc, mutated)

            def prepare(folder: Path, mutated=mutated) -> Case:
                case = build_case(target, world, folder)
                case.file.unlink()
                case.file.write_bytes(mu.dump(mutated, target.fmt))
                return case

            run_and_check(f"{target.id}-{family}-{name}", expect, prepare, tmp_path / f"leaf{n}", world, capsys,
                          monkeypatch, reference_run=baseline,
                          isolate=family == "huge_string" or family in mu.NUMBER_SWAPS)


# =========================================================================== numeric flags


@dataclass(frozen=True)
class Flag:
    entry: str
    command: str
    flag: str
    type: type  # int or float
    dest: str
    #: the flag's own conversion (an argparse ``type``, a click type's ``convert``): it declares the
    #: range when it is more than int/float (positive_int, a port number, click.IntRange)
    convert: Callable[[str], Any] | None = field(default=None, compare=False)


def _captured_parser(entry: str):
    """The argparse parser an entry point builds inside ``main``, caught at parse_args."""
    from captioning import cli

    caught = []
    real = cli.ArgumentParser.parse_args

    def catch(self, *a, **k):
        caught.append(self)
        raise SystemExit(0)

    cli.ArgumentParser.parse_args = catch
    try:
        _main(entry)(["--help"])
    finally:
        cli.ArgumentParser.parse_args = real
    return caught[0]


def _numeric_kind(convert: Callable[[str], Any]) -> type | None:
    """int or float when ``convert`` turns text into that kind of number, else None."""
    try:
        value = convert("7")
    except Exception:  # a conversion that refuses 7 is not a plain number
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return type(value)


def _argparse_flags(entry: str, command: str, parser) -> list[Flag]:
    out = []
    for action in parser._actions:
        if not action.option_strings or action.type in (None, str) or not callable(action.type):
            continue
        kind = _numeric_kind(action.type)
        if kind is not None:
            out.append(Flag(entry, command, action.option_strings[0], kind, action.dest,
                            None if action.type in (int, float) else action.type))
    return out


def discover_flags() -> list[Flag]:
    """Every numeric flag of every entry point, read from the parsers and config dataclasses."""
    import click

    flags: list[Flag] = []
    from eval.run import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in sub.choices.items():
        flags += _argparse_flags("eval", name, parser)
    for entry in ("caption", "shapes", "factory", "space"):
        flags += _argparse_flags(entry, entry, _captured_parser(entry))
    from release.cli import cli

    for name, command in cli.commands.items():
        for p in command.params:
            if isinstance(p, click.Option) and isinstance(p.type, (click.types.IntParamType,
                                                                   click.types.FloatParamType)):
                plain = type(p.type) in (click.types.IntParamType, click.types.FloatParamType)
                flags.append(Flag("release", name, p.opts[0], float if isinstance(p.type, click.types.FloatParamType)
                                  else int, p.name,
                                  None if plain else functools.partial(p.type.convert, param=p, ctx=None)))
    from training.config import TrainConfig

    for section in dataclasses.fields(TrainConfig):
        cls = typing.get_type_hints(TrainConfig)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            kinds = set(typing.get_args(hint)) - {type(None)} or {hint}
            # fields of an optional nested section (model.factory) apply only when it is chosen
            if kinds <= {int, float} and kinds:
                flags.append(Flag("train", "train", f"--{section.name}.{f.name}", float if float in kinds else int,
                                  f"{section.name}.{f.name}"))
    return flags


_VALUES = {"zero": "0", "neg1": "-1", "huge": None, "nan": "nan", "inf": "inf", "abc": "abc", "frac": "1.5"}

#: expectations no declaration states: (entry, command, dest) -> smallest allowed value, or (smallest, largest)
ALLOWED = {
    # captioning.caption's own flags (not GenerationSettings fields): counts of images and pixels
    ("caption", "caption", "batch_size"): 1,
    ("caption", "caption", "max_pixels"): 1,
    # eval/run.py reproduce checks --tolerance >= 0 inside reproduce() ("0 demands equality")
    ("eval", "reproduce", "tolerance"): 0,
    # a seed numpy and torch both take (what synthetic.shapes and the training sections declare)
    ("factory", "factory", "seed"): (0, 2**32 - 1),
    # the Space: a TCP port (unless its flag's type declares it), models kept, requests at once, waiting
    ("space", "space", "port"): (1, 65535),
    ("space", "space", "max_loaded"): 1,
    ("space", "space", "concurrency"): 1,
    ("space", "space", "max_queue"): 1,
}


def _value(flag: Flag, name: str) -> str:
    if name == "huge":
        return "1000000000000" if flag.type is int else "1e12"
    return _VALUES[name]


def _oracle(flag: Flag, text: str, world_recipe: dict | None = None) -> bool | None:
    """Whether the declaration allows ``text``: the flag's own conversion (positive_int, a port
    type, a click range), then :data:`ALLOWED`, then the config dataclass's own checks
    (GenerationSettings, GenerateConfig, the training sections, the Space's Limits,
    synthetic.shapes' argument check); None when nothing declares it."""
    import argparse

    import click

    from captioning.errors import UserError

    if flag.convert is not None:
        try:
            flag.convert(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError, click.BadParameter):
            return False
    value = float(text)
    value = int(value) if flag.type is int else value
    key = (flag.entry, flag.command, flag.dest)
    if key in ALLOWED:
        lo = ALLOWED[key]
        lo, hi = lo if isinstance(lo, tuple) else (lo, math.inf)
        return lo <= value <= hi
    try:
        if flag.entry in ("eval", "caption") and flag.command in ("generate", "caption"):
            from captioning.generation import GenerationSettings
            from eval.generate import GenerateConfig

            if flag.dest in {f.name for f in dataclasses.fields(GenerationSettings)}:
                GenerationSettings(**{"max_new_tokens": 2, flag.dest: value})
                return True
            if flag.dest in {f.name for f in dataclasses.fields(GenerateConfig)}:
                GenerateConfig(model="m", dataset="d", split="test", out="o", **{flag.dest: value})
                return True
        if flag.entry == "shapes":
            from synthetic.shapes import _check_args

            args = {"seed": 0, "counts": {"train": 1, "val": 1, "test": 1}, "size": 64}
            if flag.dest in args:
                args[flag.dest] = value
            else:
                args["counts"][flag.dest] = value
            _check_args(args["seed"], args["counts"], args["size"])
            return True
        if flag.entry == "release":
            # merge's options, which push --merge hands on (MergeOptions checks them)
            from release.merge import MergeOptions

            if flag.dest in {f.name for f in dataclasses.fields(MergeOptions)}:
                MergeOptions(adapter="a", out="o", **{flag.dest: value})
                return True
        if flag.entry == "space" and flag.dest == "max_pixels":
            from tests.space.helpers import space_part

            space_part("handlers").Limits(max_pixels=value)
            return True
        if flag.entry == "train":
            from training import config as tc

            section, name = flag.dest.split(".")
            built = {}
            for f in dataclasses.fields(tc.TrainConfig):
                cls = typing.get_type_hints(tc.TrainConfig)[f.name]
                if dataclasses.is_dataclass(cls):
                    values = dict((world_recipe or {}).get(f.name) or {})
                    if f.name == section:
                        values[name] = value
                    built[f.name] = cls(**values)
            tc.TrainConfig(name="x", **built)
            return True
    except UserError:
        return False
    except (TypeError, ValueError, OverflowError):
        return False
    return True if flag.convert is not None else None


def expect_for_flag(flag: Flag, name: str, recipe: dict) -> str:
    """``refuse`` for a value the declaration rules out (and for text, NaN, infinity and a
    fraction where a whole number goes, which no setting takes); else ``clean``: the command
    runs, or refuses in one line what the run itself finds (a merge check a tolerance of 0
    fails), but never crashes or hangs."""
    if name in ("abc", "nan", "inf") or (name == "frac" and flag.type is int):
        return "refuse"
    verdict = _oracle(flag, _value(flag, name), recipe)
    return "refuse" if verdict is False else "clean"


def _flag_cases() -> list:
    params = []
    for f in discover_flags():
        for name in _VALUES:
            if name == "frac" and f.type is float:
                continue
            params.append(pytest.param(f, name, id=f"{f.entry}-{f.command}-{f.dest}-{name}"))
    return params


def _flag_case(flag: Flag, value: str, name: str, world: World, folder: Path) -> Case:
    """The command line that takes ``flag value`` (last on the line, so it wins)."""
    fv = [flag.flag, value]
    if flag.entry == "eval" and flag.command == "generate":
        old = _sentinel(folder / "out" / "notes.txt", "an earlier file in --out\n")
        return Case("eval", ["generate", "--model", world.base, *world.gen_small(), "--out", folder / "out", *fv],
                    sentinels=[old])
    if flag.entry == "eval" and flag.command == "reproduce":
        rel = _copy(world.release, folder / "rel")
        return Case("eval", ["reproduce", rel, "--dataset", world.data, "--no-progress", *fv])
    if flag.entry == "caption":
        return Case("caption", [world.png, "--model", world.base, "--max-new-tokens", "2", *fv])
    if flag.entry == "shapes":
        old = _sentinel(folder / "shapes" / "notes.txt", "an earlier file\n")
        return Case("shapes", ["--out", folder / "shapes", "--train", "1", "--val", "1", "--test", "1", *fv],
                    sentinels=[old])
    if flag.entry == "factory":
        return Case("factory", ["--family", "blip", "--out", folder / "model", *fv])
    if flag.entry == "space":
        return Case("space", ["--models", world.base, *fv])
    if flag.entry == "release" and flag.command == "merge":
        ad = _copy(world.adapter, folder / "adapter", skip=("checkpoints", "logs"))
        olds = [_sentinel(folder / "merged" / "old.txt", "old\n")]
        return Case("release", ["merge", "--adapter", ad, "--out", folder / "merged", "--force", "--probes", "1",
                                "--max-new-tokens", "2", *fv], sentinels=olds)
    if flag.entry == "release" and flag.command == "push":
        ad = _copy(world.adapter, folder / "adapter", skip=("checkpoints",))
        old = _sentinel(folder / "rel" / "README.md", "an earlier release\n")
        return Case("release", ["push", "--repo-id", "tests/tiny-ft", "--adapter", ad, "--merge", "--to-dir",
                                folder / "rel", "--force", *fv], sentinels=[old])
    if flag.entry == "train":
        recipe = _recipe_file(world, folder, optim={"max_steps": 1}, output={"tensorboard": False})
        # a huge accepted value (max_steps 1e12) would train for ever: its config is printed instead
        tail = ["--print-config"] if name == "huge" else []
        return Case("train", ["--config", recipe, *fv, *tail])
    raise AssertionError(flag)


@pytest.mark.parametrize("flag, name", _flag_cases())
def test_numeric_flag(flag, name, world, tmp_path, capsys, monkeypatch):
    value = _value(flag, name)
    expect = expect_for_flag(flag, name, world.recipe)
    run_and_check(f"{flag.entry}-{flag.command}-{flag.dest}-{name}", expect,
                  lambda folder: _flag_case(flag, value, name, world, folder), tmp_path / "case", world, capsys,
                  monkeypatch, seconds=NUMERIC_DEADLINE_S, isolate=name == "huge")


# =========================================================================== output locations


@pytest.fixture(scope="module")
def read_only_place(tmp_path_factory):
    """A folder nothing can be written into, holding an earlier output (``existing/``): a
    read-only tmpfs where this process may mount one (root); a mode-555 folder for other users
    (mode bits bind them); else the cases are skipped (root without mount: nothing is read-only)."""
    place = tmp_path_factory.mktemp("read-only")

    def fill():
        _sentinel(place / "existing" / "old.txt", "an earlier output\n")
        _sentinel(place / "existing" / "README.md", "an earlier card\n")
        _sentinel(place / "m.json", '{"an": "earlier metrics.json"}\n')

    if os.geteuid() != 0:
        fill()
        for p in [place, *place.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield place
        for p in [place, *place.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(place)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs: no place here is read-only for root")
    try:
        fill()
        subprocess.run(["mount", "-o", "remount,ro", str(place)], check=True, capture_output=True)
        yield place
    finally:
        subprocess.run(["umount", "-l", str(place)], capture_output=True)


#: (entry, command, flag, "dir" or "file"): every flag that names where results go
OUTPUTS = [
    ("eval", "generate", "--out", "dir"),
    ("eval", "score", "--out", "file"),
    ("eval", "score", "--per-image", "file"),
    ("eval", "reproduce", "--out", "dir"),
    ("train", "train", "--output-dir", "dir"),
    ("release", "merge", "--out", "dir"),
    ("release", "card", "--out", "file"),
    ("release", "push", "--to-dir", "dir"),
    ("shapes", "shapes", "--out", "dir"),
    ("factory", "factory", "--out", "dir"),
]
PLACES = ("parent_is_file", "is_file", "is_folder", "read_only_new", "read_only_existing")


def _output_case(entry, command, flag, where: Path, world: World, folder: Path) -> Case:
    force = []
    if entry == "eval" and command == "generate":
        argv = ["generate", "--model", world.base, *world.gen_small(), "--out", where]
    elif entry == "eval" and command == "score":
        refs = world.data / "annotations" / "captions_test.json"
        argv = ["score", "--references", refs, "--predictions", world.eval_merged / "predictions.json", "--metrics",
                "Bleu", flag, where]
    elif entry == "eval" and command == "reproduce":
        argv = ["reproduce", _copy(world.release, folder / "rel"), "--dataset", world.data, "--no-progress",
                "--out", where]
    elif entry == "train":
        argv = ["--config", _recipe_file(world, folder, optim={"max_steps": 1}, output={"tensorboard": False}),
                "--output-dir", where]
    elif command == "merge":
        argv = ["merge", "--adapter", _copy(world.adapter, folder / "adapter", skip=("checkpoints", "logs")), "--out",
                where, "--probes", "1", "--max-new-tokens", "2"]
        force = ["--force"]
    elif command == "card":
        argv = ["card", "--model", world.merged, "--out", where, "--repo-id", "tests/tiny-ft"]
    elif command == "push":
        argv = ["push", "--repo-id", "tests/tiny-ft", "--model", world.merged, "--to-dir", where]
        force = ["--force"]
    elif entry == "shapes":
        argv = ["--out", where, "--train", "1", "--val", "1", "--test", "1"]
    elif entry == "factory":
        argv = ["--family", "blip", "--out", where]
    else:
        raise AssertionError(command)
    if where.name == "existing" or where.name in ("README.md", "m.json"):
        argv += force
    return Case(entry, argv)


def _output_params() -> list:
    out = []
    for entry, command, flag, shape in OUTPUTS:
        for place in PLACES:
            if (place == "is_file" and shape == "file") or (place == "is_folder" and shape == "dir"):
                continue  # a file where a file goes, a folder where a folder goes: not a mistake
            out.append(pytest.param(entry, command, flag, shape, place,
                                    id=f"{entry}-{command}-{flag.lstrip('-')}-{place}"))
    return out


@pytest.mark.parametrize("entry, command, flag, shape, place", _output_params())
def test_output_location(entry, command, flag, shape, place, world, tmp_path, capsys, monkeypatch, request):
    """A result that cannot go where it is asked to is refused before the work, in one line."""
    ro = request.getfixturevalue("read_only_place") if place.startswith("read_only") else None

    def prepare(folder: Path) -> Case:
        a_file = _sentinel(folder / "a-file", "a file in the way\n")
        a_folder = folder / "a-folder"
        a_folder.mkdir(exist_ok=True)
        _sentinel(a_folder / "old.txt", "an earlier output\n")
        name = "metrics.json" if shape == "file" else "result"
        where = {"parent_is_file": a_file / name, "is_file": a_file, "is_folder": a_folder}.get(place)
        if place == "read_only_new":
            where = ro / "new" / name
        elif place == "read_only_existing":
            where = ro / ("existing" if shape == "dir" else ("README.md" if command == "card" else "m.json"))
        case = _output_case(entry, command, flag, where, world, folder)
        case.sentinels = [a_file, a_folder / "old.txt"] + ([ro / "existing" / "old.txt", ro / "m.json"] if ro else [])
        return case

    run_and_check(f"{entry}-{command}-{flag.lstrip('-')}-{place}", "refuse", prepare, tmp_path / "case", world,
                  capsys, monkeypatch)
