"""The mechanisms behind "bad input is one clear line": one error boundary that classifies
failures by kind, one writer per output folder, partial outputs removed by the next run,
trust_remote_code only from the command line, safe YAML and JSON, finite typed records.

Each test here reproduces a finding of a review that tried inputs no test listed (issue 28);
tests/test_generated_inputs.py generates the mutations of every input file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from captioning.cli import guarded, user_message
from captioning.errors import UserError
from tests.release.conftest import make_adapter
from tests.test_bad_inputs import _main

ROOT = Path(__file__).resolve().parents[1]


def _one_error(capsys) -> str:
    """The single ``error:`` line of a refused command (and no traceback)."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, captured.err
    return lines[0]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("robust-adapter")
    base = root / "base"
    shutil.copytree(tiny_models["idefics3"], base)
    return make_adapter("idefics3", base, root / "adapter", logs="none")


@pytest.fixture
def png(shapes_dir) -> Path:
    return sorted((shapes_dir / "images" / "test").glob("*.png"))[0]


# ----------------------------------------------------------------------------- the boundary
@pytest.mark.parametrize("exc, fragment", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device; free some space"),
    (OSError(errno.EROFS, "Read-only file system", "/x/out"), "/x/out: read-only file system"),
    (OSError(errno.ELOOP, "Too many levels of symbolic links", "/x/a"), "/x/a: a loop of symbolic links"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + "a" * 300), "name too long"),
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 10000000000000 bytes"), "out of memory"),
    (RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                  "data/0: file write failed"), "no space left on the device"),
    (json.JSONDecodeError("Expecting value", "x" * 10_000, 5), "damaged JSON file"),
    (yaml.YAMLError("bad"), "damaged YAML file"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8 text"),
    (RecursionError(), "nested too deeply"),
])
def test_failures_are_classified_by_kind(exc, fragment):
    message = user_message(exc)
    assert message is not None and fragment in message and "\n" not in message


def test_damaged_safetensors_names_the_file_found_in_the_traceback(tmp_path):
    from safetensors.torch import load_file

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(Exception) as info:
        load_file(str(bad))
    assert user_message(info.value).startswith(f"{bad}: damaged weights file (safetensors: ")


def test_hub_errors_tell_offline_from_missing():
    from huggingface_hub import errors

    offline = user_message(errors.LocalEntryNotFoundError("not cached"))
    assert "not in the local cache" in offline and "pass a local folder" in offline


def test_a_wrapped_failure_is_classified_by_its_cause():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise ValueError("save failed") from e
    except ValueError as outer:
        assert "no space left" in user_message(outer)


def test_a_bug_is_one_line_exit_1_and_debug_keeps_the_traceback(capsys):
    def body():
        raise TypeError("unexpected")

    assert guarded(body) == 1
    line = _one_error(capsys)
    assert "internal error (TypeError: unexpected)" in line and "--debug" in line
    with pytest.raises(TypeError):
        guarded(body, debug=True)


def test_messages_are_cut_to_a_readable_length(capsys):
    def body():
        raise UserError("x" * 5_000_000)

    assert guarded(body) == 2
    assert len(_one_error(capsys)) < 1_100


# ----------------------------------------------------------------------- safe YAML and JSON
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(levels) + "\n")
    t0 = time.perf_counter()
    assert _main("train")(["--config", str(recipe)]) == 2
    assert time.perf_counter() - t0 < 5  # minutes and gigabytes before
    line = _one_error(capsys)
    assert "bomb.yaml: its aliases expand to over 100,000 values" in line and len(line) < 400


def test_a_duplicate_yaml_key_is_refused_not_silently_won(tmp_path, shapes_dir, capsys):
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(f"data: {{source: {shapes_dir}}}\noptim: {{learning_rate: 1.0e-3}}\n"
                      "optim: {learning_rate: 5.0}\n")
    assert _main("train")(["--config", str(recipe)]) == 2
    assert "dup.yaml: key 'optim' appears twice in one mapping (line 3)" in _one_error(capsys)


def test_an_empty_recipe_section_means_its_defaults(tmp_path, tiny_models, shapes_dir, capsys):
    """`data:` with nothing under it is null in YAML: like {} (it was an internal error)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model:\n  name_or_path: {tiny_models['idefics3']}\ndata:\n")
    assert _main("train")(["--config", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    assert "data.source is required" in _one_error(capsys)
    recipe.write_text(f"model:\n  name_or_path: {tiny_models['idefics3']}\ndata: {{source: {shapes_dir}}}\noptim:\n")
    assert _main("train")(["--config", str(recipe), "--print-config"]) == 0
    assert "learning_rate" in capsys.readouterr().out


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_recipe_number_that_is_not_a_number_is_refused(tmp_path, shapes_dir, capsys, value):
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(f"data: {{source: {shapes_dir}}}\noptim: {{learning_rate: {value}}}\n")
    assert _main("train")(["--config", str(recipe)]) == 2
    assert "nan.yaml: optim.learning_rate is" in _one_error(capsys)


def test_records_refuse_non_finite_numbers_at_write(tmp_path):
    from captioning.records import KIND_EVAL, write_record

    with pytest.raises(UserError, match=r"metrics\.CIDEr is nan"):
        write_record(tmp_path / "metrics.json", KIND_EVAL, {"metrics": {"CIDEr": float("nan")}})
    assert not list(tmp_path.iterdir())


@pytest.fixture
def eval_record(tmp_path, tiny_models) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({
        "kind": "eval", "schema": 1, "metrics": {"Bleu_4": 0.1, "CIDEr": 0.5, "SPICE": None}, "n_images": 16,
        "dataset": {"source": "shapes", "split": "test", "hash": "0" * 16}, "model": {"id": "m"}}))
    return folder


@pytest.mark.parametrize("value, fragment", [
    ("NaN", "metrics.CIDEr is NaN, not a number"), ("Infinity", "metrics.CIDEr is Infinity, not a number"),
    ('"high"', "metrics.CIDEr is str 'high', not a number"), ("[0.5]", "metrics.CIDEr is list [0.5], not a number"),
])
def test_metrics_that_are_not_numbers_are_refused_by_card_and_compare(eval_record, tiny_models, capsys, tmp_path,
                                                                       value, fragment):
    path = eval_record / "metrics.json"
    path.write_text(path.read_text().replace('"CIDEr": 0.5', f'"CIDEr": {value}'))
    assert _main("eval")(["compare", str(eval_record), str(eval_record)]) == 2
    assert fragment in _one_error(capsys)
    assert _main("release")(["card", "--model", str(tiny_models["idefics3"]), "--metrics", str(path),
                             "--out", str(tmp_path / "card" / "README.md")]) == 2
    assert fragment in _one_error(capsys)
    assert not (tmp_path / "card").exists()


def test_a_bom_is_accepted_in_every_metadata_format(tmp_path, shapes_dir):
    from captioning.data import load_captions

    folder = tmp_path / "folder"
    folder.mkdir()
    for png in sorted((shapes_dir / "images" / "test").glob("*.png"))[:2]:
        shutil.copy(png, folder / png.name)
    names = sorted(p.name for p in folder.glob("*.png"))
    (folder / "metadata.jsonl").write_text("\ufeff" + "".join(
        json.dumps({"file_name": n, "caption": "a red circle"}) + "\n" for n in names), encoding="utf-8")
    assert len(load_captions(str(folder), "train")) == 2


# ------------------------------------------------------------------ special files, in words
def test_a_fifo_and_a_link_loop_are_named_as_such(tmp_path, tiny_models, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    loop_a, loop_b = tmp_path / "a.png", tmp_path / "b.png"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    assert _main("caption")([str(fifo), "--model", str(tiny_models["idefics3"])]) == 2
    assert "pipe.png is a FIFO (named pipe), not a regular file" in _one_error(capsys)
    assert _main("caption")([str(loop_a), "--model", str(tiny_models["idefics3"])]) == 2
    assert "a.png is a loop of symbolic links" in _one_error(capsys)
    recipe = tmp_path / "pipe.yaml"
    os.mkfifo(recipe)
    assert _main("train")(["--config", str(recipe)]) == 2  # used to block forever on the read
    assert "pipe.yaml is a FIFO" in _one_error(capsys)


# --------------------------------------------------------------------- damaged model files
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_weights_are_one_line_naming_the_file(tmp_path, tiny_models, shapes_dir, png, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["idefics3"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100] if damage == "truncated" else b"")
    assert _main("caption")([str(png), "--model", str(model)]) == 2
    assert f"{weights}: damaged weights file (safetensors: " in _one_error(capsys)
    out = tmp_path / "eval"
    assert _main("eval")(["generate", "--model", str(model), "--dataset", str(shapes_dir), "--split", "test",
                          "--out", str(out), "--no-progress"]) == 2
    assert f"{weights}: damaged weights file" in _one_error(capsys)
    assert _tree(tmp_path) == _tree(tmp_path) and not out.exists() and not list(tmp_path.glob(".*"))


def test_an_adapter_whose_base_is_gone_is_one_line(tmp_path, adapter, png, capsys):
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    assert _main("caption")([str(png), "--model", str(moved)]) == 2
    assert f"names the base {tmp_path / 'gone'}, which is not a folder here" in _one_error(capsys)


# ----------------------------------------------------------- code runs only when asked for
def test_merge_never_takes_trust_remote_code_from_a_file(tmp_path, adapter, capsys):
    asking = tmp_path / "asking"
    shutil.copytree(adapter, asking)
    cfg = yaml.safe_load((asking / "train_config.yaml").read_text())
    cfg["model"]["trust_remote_code"] = True
    (asking / "train_config.yaml").write_text(yaml.safe_dump(cfg))
    assert _main("release")(["merge", "--adapter", str(asking), "--out", str(tmp_path / "merged")]) == 2
    line = _one_error(capsys)
    assert "train_config.yaml asks for trust_remote_code" in line and "--trust-remote-code" in line
    assert not (tmp_path / "merged").exists()


def test_a_recipe_cannot_switch_on_remote_code(tmp_path, tiny_models, shapes_dir, capsys):
    recipe = tmp_path / "remote.yaml"
    recipe.write_text(f"model: {{name_or_path: {tiny_models['idefics3']}, trust_remote_code: true}}\n"
                      f"data: {{source: {shapes_dir}}}\n")
    assert _main("train")(["--config", str(recipe), "--print-config"]) == 2
    assert "remote.yaml sets model.trust_remote_code" in _one_error(capsys)
    assert _main("train")(["--config", str(recipe), "--model.trust_remote_code", "true", "--print-config"]) == 0


# ------------------------------------------------------------------- one writer per folder
_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from captioning.files import output_lock
with output_lock({target!r}, "--out"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the output lock of a path; kill -9 it on request."""
    procs = []

    def hold(target: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=str(ROOT), target=str(target))],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def _generate_args(model, data, out, *extra):
    return ["generate", "--model", str(model), "--dataset", str(data), "--split", "test", "--out", str(out),
            "--max-new-tokens", "2", "--metrics", "Bleu", "--no-progress", "--no-report", "--max-images", "4", *extra]


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(
        tmp_path, tiny_models, shapes_dir, holder, capsys):
    out = tmp_path / "g"
    first = holder(out)
    assert _main("eval")(_generate_args(tiny_models["idefics3"], shapes_dir, out)) == 2
    line = _one_error(capsys)
    assert f"--out {out} is being written by another run (pid {first.pid}" in line and "wait for it" in line
    assert not out.exists()  # nothing touched
    first.kill()  # kill -9: no chance to clean up
    first.wait()
    assert _main("eval")(_generate_args(tiny_models["idefics3"], shapes_dir, out)) == 0
    assert (out / "metrics.json").is_file() and not list(tmp_path.glob(".*lock"))


def test_two_trainings_into_one_folder_are_refused(tmp_path, tiny_models, shapes_dir, holder, capsys):
    out = tmp_path / "run"
    first = holder(out)
    assert _main("train")(["--model.name_or_path", str(tiny_models["idefics3"]), "--data.source", str(shapes_dir),
                           "--output-dir", str(out)]) == 2
    assert f"is being written by another run (pid {first.pid}" in _one_error(capsys)
    assert not out.exists()


# ----------------------------------------------------------- what a kill leaves, removed
def _leftover(target: Path) -> Path:
    """What ``kill -9`` during an assembly leaves: a hidden partial folder holding weights."""
    part = target.with_name(f".{target.name}.partial-99999-abcd")
    part.mkdir(parents=True)
    (part / "model.safetensors").write_bytes(b"\0" * 1000)
    return part


def test_merge_removes_what_a_killed_merge_left(tmp_path, adapter, capsys):
    out = tmp_path / "merged"
    part = _leftover(out)
    assert _main("release")(["merge", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert not part.exists() and f"removed {part}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_push_to_dir_removes_what_a_killed_push_left(tmp_path, adapter, capsys):
    out = tmp_path / "release"
    part = _leftover(out)
    assert _main("release")(["push", "--repo-id", "ns/x", "--adapter", str(adapter), "--merge", "--to-dir",
                             str(out)]) == 0
    assert not part.exists() and f"removed {part}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_card_removes_what_a_killed_card_left(tmp_path, tiny_models, eval_record, capsys):
    out = tmp_path / "card" / "README.md"
    out.parent.mkdir()
    stale = out.with_name(".README.md.partial-x1y2z3")
    stale.write_text("half a card")
    assert _main("release")(["card", "--model", str(tiny_models["idefics3"]), "--metrics",
                             str(eval_record / "metrics.json"), "--out", str(out)]) == 0
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().err
    assert not [p for p in out.parent.rglob(".*")]


def test_a_factory_folder_cut_off_mid_save_never_looks_complete(tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedModel

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    assert _main("factory")(["--family", "idefics3", "--out", str(tmp_path / "f")]) == 2
    assert "no space left on the device" in _one_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_shapes_refuses_a_size_that_cannot_fit_in_memory(tmp_path, capsys):
    assert _main("shapes")(["--out", str(tmp_path / "s"), "--size", "1000000"]) == 2
    assert "--size must be an integer from 32 to 4096" in _one_error(capsys)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ a full disk, real
@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (root can mount one: CI and these machines run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(small_disk, tiny_models, adapter, shapes_dir,
                                                                 capsys):
    assert _main("factory")(["--family", "idefics3", "--out", str(small_disk / "f")]) == 2
    assert "no space left on the device" in _one_error(capsys)
    assert list(small_disk.iterdir()) == []
    assert _main("release")(["merge", "--adapter", str(adapter), "--out", str(small_disk / "m")]) == 2
    assert "no space left on the device" in _one_error(capsys)
    assert list(small_disk.iterdir()) == []
    assert _main("train")(["--model.name_or_path", str(tiny_models["idefics3"]), "--data.source", str(shapes_dir),
                           "--data.val_split", "val", "--optim.max_steps", "2", "--eval.on_start", "false",
                           "--output-dir", str(small_disk / "t")]) == 2
    assert "no space left on the device" in _one_error(capsys)  # torch.save's own words do not say so


# ----------------------------------------------------------- an output that is one of the inputs
def _snapshot(paths) -> dict:
    return {str(f): f.read_bytes() for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))
            if f.is_file()}


@pytest.fixture
def owned(tmp_path, tiny_models, adapter, shapes_dir, eval_record) -> dict[str, Path]:
    """Copies of every kind of input a command reads, inside tmp_path (so an output can hold them)."""
    refs = tmp_path / "refs.json"
    shutil.copy(shapes_dir / "annotations" / "captions_test.json", refs)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": im["id"], "caption": "a red circle"}
                                 for im in json.loads(refs.read_text())["images"]]))
    places = {"refs": refs, "preds": preds, "model": tmp_path / "in" / "model", "adapter": tmp_path / "in2" / "adapter",
              "eval": eval_record, "in": tmp_path / "in", "in2": tmp_path / "in2"}
    shutil.copytree(tiny_models["idefics3"], places["model"])
    shutil.copytree(adapter, places["adapter"])
    return places


@pytest.mark.parametrize("entry, argv, fragment", [
    ("eval", ["score", "--references", "{refs}", "--predictions", "{preds}", "--out", "{refs}"],
     "--out {refs} is the --references this command reads"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{preds}", "--out", "{preds}"],
     "is the --predictions this command reads"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{preds}", "--per-image", "{preds}"],
     "--per-image {preds} is the --predictions"),
    ("eval", ["score", "--references", "{refs}", "--predictions", "{preds}", "--out", "{in}/m.json", "--per-image",
              "{in}/m.json"], "is the --out this command reads"),
    ("release", ["card", "--model", "{model}", "--metrics", "{eval}/metrics.json", "--out", "{eval}/metrics.json"],
     "is the --metrics this command reads"),
    ("release", ["card", "--model", "{model}", "--out", "{model}/config.json"],
     "is the --model's config.json this command reads"),
    ("release", ["card", "--model", "{adapter}", "--out", "{adapter}/train_config.yaml"],
     "is the --model's train_config.yaml"),
    ("release", ["merge", "--adapter", "{adapter}", "--out", "{in2}", "--force"], "holds the --adapter this command"),
    ("release", ["push", "--repo-id", "ns/x", "--model", "{model}", "--to-dir", "{in}", "--force"],
     "--to-dir {in} holds the --model this command reads"),
    ("release", ["push", "--repo-id", "ns/x", "--model", "{model}", "--eval", "{eval}", "--to-dir", "{eval}",
                 "--force"], "is the --eval this command reads"),
    ("release", ["space", "--repo-id", "ns/s", "--models", "{model}", "--to-dir", "{in}", "--force"],
     "holds the --models entry 1"),
    ("factory", ["--family", "idefics3", "--out", "{adapter}"], "captioning.factory did not write it): pass --force"),
    ("eval", ["compare", "{eval}", "{eval}/metrics.json"], "the same run as {eval} (given twice)"),
])
def test_an_output_is_never_one_of_the_inputs(owned, capsys, entry, argv, fragment):
    """One rule (captioning.files.check_not_input, through output_lock): writing or replacing
    an output refuses a path that is, or holds, what the command reads. Found by a sample of
    unlisted inputs: `score --out REFS` overwrote the references, `factory --out ADAPTER`
    replaced a trained adapter."""
    before = _snapshot([owned["refs"], owned["preds"], owned["in"], owned["in2"], owned["eval"]])
    assert _main(entry)([a.format(**owned) for a in argv]) == 2
    assert fragment.format(**owned) in _one_error(capsys)
    assert _snapshot([owned["refs"], owned["preds"], owned["in"], owned["in2"], owned["eval"]]) == before


def test_reproduce_of_an_eval_folder_says_it_needs_the_model_beside_it(owned, capsys):
    assert _main("eval")(["reproduce", str(owned["eval"])]) == 2
    message = _one_error(capsys)
    assert "holds an eval record but no model" in message and "--model m --eval" in message


def test_an_unreadable_image_found_mid_training_says_how_to_go_on(tmp_path, tiny_models, shapes_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    for png in (data / "images" / "train").glob("*.png"):
        png.write_text("not an image")
    assert _main("train")(["--model.name_or_path", str(tiny_models["idefics3"]), "--data.source", str(data),
                           "--data.val_split", "val", "--output-dir", str(tmp_path / "run"),
                           "--optim.max_steps", "1", "--eval.enabled", "false"]) == 2
    message = _one_error(capsys)
    assert "not an image file" in message and "--data.skip_bad_images true" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, key, value, says", [
    ("optim", "learning_rate", "fast", "optim.learning_rate is str 'fast', not float"),
    ("lora", "r", [4], "lora.r is list [4], not int"),
    ("model", "freeze_vision", "yes", "model.freeze_vision is str 'yes', not bool"),
])
def test_the_card_reads_train_config_through_its_declared_types(adapter, tmp_path, capsys, section, key, value, says):
    """The card used to show a damaged train_config.yaml's values as recorded; it reads them
    against the types training.config declares (training.recorded) and refuses in one line."""
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    cfg = yaml.safe_load((folder / "train_config.yaml").read_text())
    cfg.setdefault(section, {})[key] = value
    (folder / "train_config.yaml").write_text(yaml.safe_dump(cfg))
    assert _main("release")(["card", "--model", str(folder), "--out", str(tmp_path / "card" / "README.md")]) == 2
    assert says in _one_error(capsys)
    assert not (tmp_path / "card").exists()
