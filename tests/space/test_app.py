"""space/app.py without a browser: configuration, model cards, the registry, input hygiene."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from tests.space.helpers import APP_PATH, REPO, fresh_app_module, space_part


@pytest.fixture(scope="module")
def tiny_space(space_app, space_models):
    """build_demo over the tiny models (not launched), with small image limits."""
    limits = space_app.Limits(max_pixels=50_000, downscale_pixels=1_000)
    demo = space_app.build_demo([str(space_models[n]) for n in ("ft", "base", "blip", "broken")], limits=limits)
    return demo


@pytest.fixture
def png(tmp_path):
    def make(size=(40, 30), name="pic.png", color="red") -> Path:
        path = tmp_path / name
        Image.new("RGB", size, color).save(path)
        return path

    return make


# ---------------------------------------------------------------------- import / deploy

def test_import_has_no_side_effects():
    def files():
        return sorted(p for p in APP_PATH.parent.rglob("*") if "__pycache__" not in p.parts)

    def new_threads() -> set:
        # threads started since, by identity: a server an earlier test closed may still be ending its own
        return set(threading.enumerate()) - threads

    before, threads = files(), set(threading.enumerate())
    with fresh_app_module("space_app_fresh_import") as module:
        assert new_threads() == set()  # no server, no queue workers
        assert callable(module.build_demo) and not hasattr(module, "demo")
        module.build_demo(["org/not-cached"], loader=lambda entry: None)
        assert files() == before  # nothing written next to app.py (e.g. Gradio's .pyi stubs)
        assert new_threads() == set()


def test_import_changes_no_environment_or_path():
    """Importing the app (gradio and the core with it) in a fresh process leaves os.environ
    and sys.path as they were: Gradio's and the Hub's telemetry switches are main()'s job."""
    probe = (
        "import importlib.util, os, sys\n"
        "env, path = dict(os.environ), list(sys.path)\n"
        f"spec = importlib.util.spec_from_file_location('space_app', {str(APP_PATH)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['space_app'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert callable(module.main)\n"
        "changed = sorted(k for k in env.keys() | os.environ.keys() if env.get(k) != os.environ.get(k))\n"
        "assert not changed, changed\n"
        "assert sys.path == path, (path, sys.path)\n")
    quiet = ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(APP_PATH.parent)])
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_main_turns_telemetry_off_unless_asked(space_app, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", False)
    assert space_app.main(["--help"]) == 0
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY is True


def test_zero_gpu_wraps_generation_when_spaces_imports(monkeypatch):
    wrapped = []
    fake = SimpleNamespace(GPU=lambda fn: wrapped.append(fn) or fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    with fresh_app_module("space_app_zerogpu"):
        registry = space_part("registry")
        assert [f.__name__ for f in wrapped] == ["generate"]
        assert registry.spaces is fake


def test_space_files(space_app):
    readme = (REPO / "space" / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    import gradio

    assert front["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    assert '"/caption"' in readme and '"/compare"' in readme and "gradio_client" in readme
    reqs = (REPO / "space" / "requirements.txt").read_text()
    assert "transformers" in reqs and "torchvision" not in reqs.replace("No torchvision", "")
    assert "gradio[mcp]>=6" in reqs  # the MCP server app.py starts by default
    examples = sorted(p for p in (REPO / "space" / "examples").iterdir() if p.suffix in (".png", ".jpg"))
    assert len(examples) >= 6
    from captioning.images import load_image

    for p in examples:
        assert p.stat().st_size < 16_000, p
        assert load_image(p).size[0] >= 64


# ----------------------------------------------------------------------- configuration

def test_parse_models(space_app):
    entries = space_app.parse_models("org/a, ./local/b;name=My B;revision=v2 ,\norg/c;trust_remote_code=true")
    assert [e.id for e in entries] == ["org/a", "./local/b", "org/c"]
    assert entries[1].name == "My B" and entries[1].revision == "v2" and entries[1].key == "./local/b@v2"
    assert [e.trust_remote_code for e in entries] == [False, False, True]  # only when asked for
    with pytest.raises(space_app.UserError, match="unknown option"):
        space_app.parse_models("org/a;trust=true")
    with pytest.raises(space_app.UserError, match="not key=value"):
        space_app.parse_models("org/a;trust_remote_code")
    with pytest.raises(space_app.UserError, match="true or false"):
        space_app.parse_models("org/a;trust_remote_code=maybe")


def test_a_model_entry_sets_the_decoding_the_page_has_no_control_for(space_app, space_models, shapes_dir,
                                                                      monkeypatch):
    """Every GenerationSettings flag the page does not set is a model entry option, typed and
    checked by GenerationSettings itself: a decoding setting added to the core reaches the
    Space with no change here."""
    from tests.space.helpers import space_part

    entries = space_app.parse_models("org/a;top_k=7;repetition_penalty=1.3;min_new_tokens=2, org/b")
    assert dict(entries[0].decoding) == {"top_k": 7, "repetition_penalty": 1.3, "min_new_tokens": 2}
    assert entries[1].decoding == ()
    for bad, says in (("org/a;top_k=-1", "top-k must be >= 0"), ("org/a;temperature=0.5", "unknown option"),
                      ("org/a;top_k=many", "top_k must be a whole number")):
        with pytest.raises(space_app.UserError, match=says):
            space_app.parse_models(bad)
    handlers, seen = space_part("handlers"), []
    real = handlers.generate
    monkeypatch.setattr(handlers, "generate", lambda *a: seen.append(a[-1]) or real(*a))
    demo = space_app.build_demo([f"{space_models['blip']};top_k=3;repetition_penalty=1.5"], examples_dir=None)
    png = sorted((shapes_dir / "images" / "test").glob("*.png"))[0]
    demo.caption_space.caption(str(png), None, "", 4)
    assert (seen[0].top_k, seen[0].repetition_penalty, seen[0].max_new_tokens) == (3, 1.5, 4)


def test_models_sources_in_order(space_app, tmp_path):
    cfg = tmp_path / "models.yaml"
    cfg.write_text(yaml.safe_dump({"models": ["org/from-yaml", {"id": "org/x", "trust_remote_code": True,
                                                                 "name": "X"}]}))
    assert [e.id for e in space_app.configured_models(yaml_path=cfg, env={})] == ["org/from-yaml", "org/x"]
    assert space_app.configured_models(yaml_path=cfg, env={})[1].trust_remote_code is True
    env = {"CAPTION_MODELS": "org/from-env"}
    assert [e.id for e in space_app.configured_models(yaml_path=cfg, env=env)] == ["org/from-env"]
    assert [e.id for e in space_app.configured_models("org/cli", yaml_path=cfg, env=env)] == ["org/cli"]
    assert space_app.configured_models(yaml_path=REPO / "space" / "models.yaml", env={}) == []
    cfg.write_text("models: [{id: org/a, weights: big}]")
    with pytest.raises(space_app.UserError, match="unknown option"):
        space_app.configured_models(yaml_path=cfg, env={})
    with pytest.raises(space_app.UserError, match="names model 'org/a' twice"):
        space_app.build_demo(["org/a", "org/a"], loader=lambda e: None)


def test_cli_errors_are_one_line(space_app, capsys, monkeypatch):
    monkeypatch.delenv("CAPTION_MODELS", raising=False)
    monkeypatch.setattr(space_app, "MODELS_YAML", Path("/nonexistent/models.yaml"))
    assert space_app.main(["--models", ","]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no models to serve") and err.count("\n") == 1
    assert space_app.main(["--models", "org/a;bogus=1"]) == 2
    assert "unknown option" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "abc"])
def test_bad_port_is_one_line(space_app, capsys, monkeypatch, port):
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert space_app.main(["--models", "org/a", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python space/app.py: argument --port: ") and "1-65535" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_port_from_the_environment_is_checked_like_the_flag(space_app, capsys, monkeypatch):
    seen = []

    def launch(self, **kwargs):
        seen.append(kwargs["server_port"])
        raise KeyboardInterrupt  # as Ctrl-C would: main closes the demo and returns 0

    monkeypatch.setattr(space_app.gr.Blocks, "launch", launch)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "abc")
    assert space_app.main(["--models", "org/a"]) == 2
    assert capsys.readouterr().err.startswith("error: python space/app.py: argument --port: 'abc' is not a port")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    assert space_app.main(["--models", "org/a"]) == 0
    assert space_app.main(["--models", "org/a", "--port", "65535"]) == 0
    assert seen == [8123, 65535]


def test_a_host_or_port_it_cannot_listen_on_is_one_line_before_launch(space_app, capsys, monkeypatch):
    import socket

    monkeypatch.setattr(space_app.gr.Blocks, "launch", lambda self, **kw: pytest.fail("launched"))
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for argv, says in ((["--host", "999.1.1.1"], "--host 999.1.1.1: not an address this machine can resolve"),
                           (["--port", port], f"--port {port}: already in use on 127.0.0.1")):
            assert space_app.main(["--models", "org/a", *argv]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {says}") and err.count("\n") == 1, err


def test_a_model_listed_twice_is_one_line_naming_where(space_app, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("CAPTION_MODELS", raising=False)
    folder = tmp_path / "m"
    folder.mkdir()
    for models, says in (("org/a,org/a", "--models names model 'org/a' twice: list each model once"),
                         ("org/a;name=One,Org/A;name=Two", "--models names model 'Org/A' twice (also as 'org/a')"),
                         (f"{folder},{folder}/", f"--models names model '{folder}/' twice (also as '{folder}')")):
        assert space_app.main(["--models", models]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {says}") and err.count("\n") == 1, err
    monkeypatch.setenv("CAPTION_MODELS", "org/a,org/a")
    assert space_app.main([]) == 2
    assert capsys.readouterr().err.startswith("error: CAPTION_MODELS names model 'org/a' twice")
    # two revisions of one model are two models
    assert [e.key for e in space_app.configured_models("org/a;revision=v1,org/a", env={})] == ["org/a@v1", "org/a"]


# ------------------------------------------------------------------------- model cards

def test_model_cards_read_once(tiny_space, space_models):
    app = tiny_space.caption_space
    infos = {i.label: i for i in app.infos}
    assert list(infos) == ["tiny-smolvlm-ft", "tiny-smolvlm", "tiny-blip", "broken-model"]
    ft, base, blip = infos["tiny-smolvlm-ft"], infos["tiny-smolvlm"], infos["tiny-blip"]
    assert (ft.family, base.family, blip.family) == ("idefics3", "idefics3", "blip")
    assert ft.takes_prompt and not blip.takes_prompt and blip.prompt is None
    assert ft.prompt == "Give a concise caption."
    expected = {"CIDEr": 0.876, "Bleu_4": 0.321, "n_images": 16, "split": "test", "dataset": "shapes",
                "caption_transform": "none"}
    assert {k: ft.card_metrics().get(k) for k in expected} == expected
    assert space_app_metrics_line(tiny_space) == \
        "CIDEr 0.876 · BLEU-4 0.321 (eval on test, 16 images, plain references)"
    # the release names its local base portably ("<local>/NAME") and by weights fingerprint, which pairs them
    assert ft.base == "<local>/tiny-smolvlm" and base.base is None
    assert ft.base_fingerprint is not None and ft.base_fingerprint == base.fingerprint  # hashed to pair them
    assert [(b.label, f.label) for b, f in app.pairs] == [("tiny-smolvlm", "tiny-smolvlm-ft")]
    assert infos["broken-model"].card_metrics() == {}
    assert app.registry.load_count == 0  # nothing loaded just to describe the models


def space_app_metrics_line(demo) -> str:
    app = demo.caption_space
    return sys.modules["space_app"].metrics_line(app.infos[0])


def test_base_named_by_train_config_alone(space_app, space_models, tmp_path):
    """A training output (no card, no release manifest) names its base in train_config.yaml."""
    ft = tmp_path / "ft"
    shutil.copytree(space_models["ft"], ft)
    (ft / "README.md").unlink()
    (ft / "release.json").unlink()
    cfg = yaml.safe_load((ft / "train_config.yaml").read_text())
    cfg["model"]["name_or_path"] = str(space_models["base"])
    (ft / "train_config.yaml").write_text(yaml.safe_dump(cfg))
    info = space_app.read_model_info(space_app.ModelEntry(str(ft)))
    assert info.base == str(space_models["base"]) and info.base_fingerprint is None
    assert space_app.same_model(info.base, str(space_models["base"]) + "/")


def test_hub_model_card_offline_is_incomplete_not_fatal(space_app):
    info = space_app.read_model_info(space_app.ModelEntry("someone/not-cached;x".split(";")[0]))
    assert info.label == "someone/not-cached" and info.url == "https://huggingface.co/someone/not-cached"
    assert info.family is None and info.takes_prompt and info.metrics is None
    assert any(n.startswith("metrics.json: not readable") for n in info.notes)


# ---------------------------------------------------------------------------- registry

def _fake_loader(log):
    def load(entry):
        log.append(entry.id)
        if "bad" in entry.id:
            raise OSError("weights missing")
        return SimpleNamespace(family=SimpleNamespace(name="idefics3", default_prompt="p"), prompt="p")

    return load


def _infos(space_app, ids):
    return [space_app.ModelInfo(entry=space_app.ModelEntry(i), label=i) for i in ids]


def test_registry_is_lazy_lru_and_isolates_failures(space_app, monkeypatch):
    calls = []
    reg = space_app.ModelRegistry(_infos(space_app, ["org/a", "org/b", "org/c", "org/bad"]), max_loaded=2,
                                  loader=_fake_loader(calls))
    assert calls == []
    a, load_s = reg.get("org/a")
    assert load_s > 0 or calls == ["org/a"]
    assert reg.get("org/a") == (a, 0.0)
    reg.get("org/b")
    reg.get("org/a")  # a is now the most recently used
    reg.get("org/c")  # evicts b
    assert reg.loaded() == ["org/a", "org/c"] and calls == ["org/a", "org/b", "org/c"]
    # not a failure a user can fix (captioning.cli.user_message): an internal error, its text in the log only
    with pytest.raises(space_app.ModelLoadError, match=r"org/bad failed to load: internal error \(OSError\); the "
                                                       "server log has the details"):
        reg.get("org/bad")
    with pytest.raises(space_app.ModelLoadError):
        reg.get("org/bad")
    assert calls.count("org/bad") == 1  # the failure is remembered for a while...
    monkeypatch.setattr(space_part("registry"), "FAILED_RETRY_S", 0.0)
    with pytest.raises(space_app.ModelLoadError):
        reg.get("org/bad")
    assert calls.count("org/bad") == 2  # ...then retried
    assert reg.get("org/c")[1] == 0.0 and reg.failure("org/bad").startswith("internal error (OSError)")
    with pytest.raises(space_app.UserError, match="unknown model"):
        reg.get("org/zzz")


def test_registry_loads_once_under_concurrency(space_app):
    calls = []
    slow = _fake_loader(calls)
    gate = threading.Event()

    def loader(entry):
        gate.wait(5)
        return slow(entry)

    reg = space_app.ModelRegistry(_infos(space_app, ["org/a"]), loader=loader)
    threads = [threading.Thread(target=reg.get, args=("org/a",)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert calls == ["org/a"]


def test_registry_passes_trust_remote_code_only_when_configured(space_app, monkeypatch):
    import captioning.loading

    seen = []
    monkeypatch.setattr(captioning.loading, "load_captioner", lambda model, **kw: seen.append((model, kw)))
    entries = space_app.parse_models("org/plain,org/custom;trust_remote_code=true;revision=v1")
    infos = [space_app.ModelInfo(entry=e, label=e.id) for e in entries]
    reg = space_app.ModelRegistry(infos)
    reg.get("org/plain")
    reg.get("org/custom@v1")
    assert seen[0][1]["trust_remote_code"] is False and seen[0][1]["device"] == "auto"
    assert seen[0][1]["dtype"] == "auto"
    assert seen[1][1]["trust_remote_code"] is True and seen[1][1]["revision"] == "v1"


def test_stable_ids(space_app, tmp_path):
    """API ids: a hub model's repo id, a folder's name= or its own name, never its path;
    repeats numbered in order."""
    registry = space_part("registry")
    entries = space_app.parse_models(f"org/a,org/a;revision=v1,{tmp_path / 'x' / 'model'},"
                                     f"{tmp_path / 'y' / 'model'},{tmp_path / 'z'};name=Mine")
    infos = [space_app.ModelInfo(entry=e, label=e.id) for e in entries]
    assert list(registry.stable_ids(infos)) == ["org/a", "org/a@v1", "model", "model-2", "Mine"]


# ------------------------------------------------------------------------ input hygiene

def _settings():
    return dict(max_new_tokens=6, num_beams=1, temperature=0, top_p=1, seed=-1)


def test_caption_handler_matches_core(tiny_space, space_models, png, core_captioners):
    from captioning.generation import GenerationSettings, caption_images
    from captioning.images import load_image

    app = tiny_space.caption_space
    path = png((60, 40))
    text, timing = app.caption((str(path), "pic.png"), "tiny-blip", "", variations=1,
                               **_settings())
    expected = caption_images(core_captioners("blip"), [load_image(path)], None,
                              GenerationSettings(max_new_tokens=6))
    assert text == expected[0][0] and "cpu" in timing


def test_image_limits_and_errors(tiny_space, space_app, png, tmp_path):
    app = tiny_space.caption_space
    small = app._image((str(png((200, 150))), "big.png"))  # 30,000 px: under max, over downscale
    assert small.width * small.height <= 1_000 and abs(small.width / small.height - 4 / 3) < 0.1
    # a visitor cannot pass --max-pixels: the refusal says the Space's limit and what they can do
    huge = png((300, 300), "huge.png")
    over = "huge.png: the image is 300x300 = 90,000 pixels, over this Space's limit of 50,000 pixels: upload a " \
           "smaller image"
    with pytest.raises(space_app.gr.Error) as err:
        app._image((str(huge), "huge.png"))
    assert err.value.message == over
    assert app.check_upload((str(huge), "huge.png")) == (over, False)
    table, *_ = app.batch([str(huge)], app.model_id(app.infos[2]), **_settings())
    assert table[0][3] == over
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(space_app.gr.Error, match="bad.jpg: not an image file we can read") as err:
        app._image((str(bad), "bad.jpg"))
    assert "Pillow" not in err.value.message and "PIL" not in err.value.message
    assert app.check_upload((str(bad), "bad.jpg")) == (
        "bad.jpg: not an image file we can read; upload a PNG, JPEG, WebP, GIF, BMP or TIFF image", False)
    assert app.check_upload((str(png()), "pic.png")) == ("", True)
    with pytest.raises(space_app.gr.Error, match="Upload an image"):
        app.caption(None, app.model_id(app.infos[0]), "", variations=1, **_settings())
    # names are escaped before gr.Error renders them as HTML
    with pytest.raises(space_app.gr.Error, match="&lt;b&gt;.png"):
        app._image((str(bad), "<b>.png"))


def test_decompression_bomb_refused_before_decoding(space_app, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 MP, a few KB on disk
    app = SimpleNamespace(limits=space_app.Limits())
    with pytest.raises(space_app.gr.Error, match="bomb.png: the image is .*over this Space's limit of 50,000,000 "
                                                 "pixels: upload a smaller image"):
        space_app.CaptionSpace._load(app, str(bomb), "bomb.png")


def test_bad_settings_and_prompts(tiny_space, space_app, png):
    app = tiny_space.caption_space
    img = (str(png()), "pic.png")
    ft, blip = app.model_id(app.infos[0]), app.model_id(app.infos[2])
    for bad, match in ((dict(num_beams=0), "beams"), (dict(max_new_tokens=999), "max new tokens"),
                       (dict(temperature=5), "temperature"), (dict(top_p=0), "top-p"),
                       (dict(seed="x"), "numbers")):
        with pytest.raises(space_app.gr.Error, match=match):
            app.caption(img, ft, "", variations=1, **{**_settings(), **bad})
    with pytest.raises(space_app.gr.Error, match="variations"):
        app.caption(img, ft, "", variations=6, **_settings())
    with pytest.raises(space_app.gr.Error, match="captions without a prompt"):
        app.caption(img, blip, "a photo of", variations=1, **_settings())
    with pytest.raises(space_app.gr.Error, match="longer than"):
        app.caption(img, ft, "x" * 501, variations=1, **_settings())
    with pytest.raises(space_app.gr.Error, match="Pick 2 to 4"):
        app.compare(img, [ft], **_settings())
    with pytest.raises(space_app.gr.Error, match="once"):
        app.compare(img, [ft, ft], **_settings())


def test_sampling_seed_is_drawn_shown_and_reusable(tiny_space, png):
    app = tiny_space.caption_space
    img = (str(png()), "pic.png")
    settings = {**_settings(), "temperature": 0.9}
    text, timing = app.caption(img, "tiny-smolvlm", "", variations=2, **settings)
    seed = int(timing.rsplit("seed ", 1)[1].split()[0])
    again, timing2 = app.caption(img, "tiny-smolvlm", "", variations=2, **{**settings, "seed": seed})
    assert again == text and f"seed {seed}" in timing2
    assert "no seed needed" in app.caption(img, "tiny-smolvlm", "", variations=1, **_settings())[1]


def test_failed_model_is_an_error_for_that_model_only(tiny_space, space_app, png):
    app = tiny_space.caption_space
    img = (str(png()), "pic.png")
    broken, blip = app.model_id(app.infos[3]), app.model_id(app.infos[2])
    with pytest.raises(space_app.gr.Error, match="broken-model failed to load"):
        app.caption(img, broken, "", variations=1, **_settings())
    _, results = app.compare(img, [broken, blip], **_settings())
    assert results[0]["error"] and results[1]["caption"]
    with pytest.raises(space_app.gr.Error, match="broken-model failed to load"):
        app.batch([str(png())], broken, **_settings())


def test_every_event_goes_through_the_one_failure_boundary(space_app, tiny_space):
    """Each event runs a function failures.handled made, or a lambda that only returns
    constants or calls such functions: no exception reaches Gradio as itself."""
    handled = space_part("failures").HANDLED
    demo = tiny_space  # with a base vs fine-tuned preset button

    def is_handled(name: str) -> bool:
        fn = getattr(space_app, name, None) or getattr(space_app.CaptionSpace, name, None)
        return getattr(fn, handled, False)

    # Gradio's own (gr.Examples' load_example) aside
    fns = [block_fn.fn for block_fn in demo.fns.values() if not block_fn.fn.__module__.startswith("gradio")]
    named = {fn.__name__: fn for fn in fns if fn.__name__ != "<lambda>"}
    assert {"caption", "compare", "batch", "models", "models_table", "model_info", "beams_for",
            "decoding_line"} <= set(named)
    assert [n for n, fn in named.items() if not getattr(fn, handled, False)] == []
    lambdas = [fn for fn in fns if fn.__name__ == "<lambda>"]
    assert {n for fn in lambdas for n in fn.__code__.co_names} == {"refuse_or_clear", "preset"}
    assert all(is_handled(n) for fn in lambdas for n in fn.__code__.co_names)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_weights_are_one_line_naming_the_model(space_app, tiny_models, tmp_path, png, damage):
    """A model whose weights file is cut short or empty: its name, "damaged weights" and what
    to do, on every path that meets it (caption, compare, batch, /models); never the library's
    exception or a server path."""
    folder = tmp_path / "damaged-blip"
    shutil.copytree(tiny_models["blip"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100] if damage == "truncated" else b"")
    demo = space_app.build_demo([str(folder), str(tiny_models["blip"])])
    app = demo.caption_space
    img = (str(png()), "pic.png")
    with pytest.raises(space_app.gr.Error) as err:
        app.caption(img, "damaged-blip", "", variations=1, **_settings())
    message = err.value.message
    assert message.startswith("model damaged-blip failed to load: model.safetensors: damaged weights"), message
    assert "again" in message  # write, copy or download it again
    assert "\n" not in message and "SafetensorError" not in message and str(tmp_path) not in message
    _, rows = app.compare(img, ["damaged-blip", "blip"], **_settings())
    assert rows[0]["error"] == message and rows[1]["caption"]
    with pytest.raises(space_app.gr.Error) as err:
        app.batch([str(png())], "damaged-blip", **_settings())
    assert err.value.message == message
    assert app.models()[0]["status"] == "failed: " + message.split(" failed to load: ", 1)[1]


def test_an_unexpected_failure_is_an_internal_error_logged_with_its_traceback(space_app, png, monkeypatch, caplog):
    """A bug shows its exception's class and where the details are; its text (which may hold
    anything, a server path included) and traceback go to the server log only. A failure a
    user can fix (a full disk here) reads as captioning.cli.user_message says, without the path."""
    import errno
    import logging

    handlers = space_part("handlers")
    demo = space_app.build_demo(["org/a"], loader=lambda entry: None)
    app = demo.caption_space

    def bug(*args, **kwargs):
        raise KeyError("/srv/secret/models")

    monkeypatch.setattr(handlers, "views_models_table", bug)
    with caplog.at_level(logging.ERROR, logger="space"), pytest.raises(space_app.gr.Error) as err:
        app.models()
    assert err.value.message == "internal error (KeyError); the server log has the details"
    assert "/srv/secret/models" in caplog.text and "Traceback" in caplog.text

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/srv/secret/captions.csv")

    monkeypatch.setattr(space_part("batch_files"), "write_atomic", full)
    monkeypatch.setattr(handlers, "generate", lambda *args: [["a caption"]])
    with pytest.raises(space_app.gr.Error) as err:
        app.batch([str(png())], "org/a", **_settings())
    assert err.value.message.startswith("captions.csv: no space left on the device; free some space")
    assert "/srv" not in err.value.message


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _png_bytes(color="blue") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, "PNG")
    return buf.getvalue()


def test_zip_members_guarded(space_app, tmp_path, monkeypatch):
    z = _zip(tmp_path / "in.zip", {"a/one.png": _png_bytes(), "../../two.png": _png_bytes("red"),
                                   "__MACOSX/a/._one.png": b"junk", "a/.hidden.png": b"x", "readme.txt": b"t",
                                   "/abs/three.jpg": _png_bytes("green")})
    batch_files = space_part("batch_files")
    members = batch_files.zip_members(z)
    assert [n for n, _ in members] == ["in.zip/a/one.png", "in.zip/two.png", "in.zip/abs/three.jpg"]
    assert not (tmp_path.parent / "two.png").exists()  # nothing is ever extracted
    bomb = _zip(tmp_path / "bomb.zip", {"big.png": b"\0" * (batch_files.MAX_MEMBER_BYTES + 1)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(space_app.gr.Error, match="big.png: .*over the"):
        batch_files.zip_members(bomb)
    monkeypatch.setattr(batch_files, "MAX_BATCH_IMAGES", 3)
    many = _zip(tmp_path / "many.zip", {f"{i}.png": _png_bytes() for i in range(4)})
    with pytest.raises(space_app.gr.Error, match="At most 3 images"):
        batch_files.zip_members(many)
    notzip = tmp_path / "fake.zip"
    notzip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(space_app.gr.Error, match="fake.zip: not a readable zip"):
        batch_files.zip_members(notzip)


def test_batch_files_table_and_downloads(tiny_space, space_app, png, tmp_path):
    app = tiny_space.caption_space
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    z = _zip(tmp_path / "more.zip", {"x.png": _png_bytes()})
    table, csv_path, json_path, summary = app.batch([str(png()), str(bad), str(z)], app.model_id(app.infos[2]),
                                                    **_settings())
    assert [r[0] for r in table] == ["pic.png", "bad.png", "more.zip/x.png"]
    rows = json.loads(Path(json_path).read_text())
    assert [r["file"] for r in rows] == [r[0] for r in table] and rows[1]["caption"] == ""
    assert "bad.png: not an image file" in rows[1]["error"]
    assert rows[0]["caption"] and rows[2]["caption"] and rows[0]["model"] == "tiny-blip"
    assert {(r["max_new_tokens"], r["num_beams"], r["temperature"], r["seed"]) for r in rows} == {(6, 1, 0.0, None)}
    import csv

    exported = list(csv.DictReader(io.StringIO(Path(csv_path).read_text())))
    assert exported == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    assert "2 of 3 images" in summary
    with pytest.raises(space_app.gr.Error, match="Upload images"):
        app.batch([], app.model_id(app.infos[2]), **_settings())


def test_compare_cards_escape_text(space_app):
    html = space_app.compare_html([{"name": "<script>x</script>", "family": "blip", "caption": "a <b>cat</b>",
                                    "seconds": 0.1, "load_seconds": 0, "error": None, "card_metrics": None},
                                   {"name": "m2", "family": None, "caption": None, "seconds": None,
                                    "error": "m2 failed to load: <oops>", "card_metrics": None}])
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &lt;b&gt;cat&lt;/b&gt;" in html
    assert "failed to load: &lt;oops&gt;" in html and html.count('class="cmp-card"') == 2


def test_compare_flags_card_numbers_that_are_not_comparable(space_app):
    """Side by side, a card number measured on other references (or split, caption transform,
    image count) is flagged, naming the model it is compared with and why."""
    def info(label, **ds):
        doc = {"metrics": {"CIDEr": 0.5}, "n_images": 16,
               "dataset": {"source": "shapes", "split": "test", "hash": "a" * 64, **ds}}
        return space_app.ModelInfo(entry=space_app.ModelEntry(label), label=label, metrics=doc)

    base, same, styled = info("base"), info("same"), info("style", hash="b" * 64, caption_transform="linguistic_errors")
    assert space_app.card_not_comparable(base, base) is None
    assert space_app.card_not_comparable(base, same) is None
    assert space_app.card_not_comparable(base, styled) == \
        "not comparable with base's: scored against style references (linguistic_errors) vs plain references"
    html = space_app.compare_html([
        {"name": "base", "family": "x", "caption": "c", "seconds": 0.1, "error": None,
         "card_metrics": base.card_metrics(), "card_not_comparable": None},
        {"name": "style", "family": "x", "caption": "c", "seconds": 0.1, "error": None,
         "card_metrics": styled.card_metrics(), "card_not_comparable": space_app.card_not_comparable(base, styled)}])
    assert html.count('class="cmp-warn"') == 1 and "not comparable with base&#x27;s" in html


def test_deployed_space_serves_and_stops_on_ctrl_c(space_models, tmp_path):
    """A Space folder (app.py with captioning/ beside it, what `release space` ships) runs
    `python app.py --models ...`: it uses the captioning next to it, prints its URL,
    serves on loopback, and exits 0 on Ctrl-C."""
    import signal
    import time
    import urllib.request

    from tests.space.helpers import free_port

    space = tmp_path / "space"
    shutil.copytree(APP_PATH.parent, space, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "captioning", space / "captioning", ignore=shutil.ignore_patterns("__pycache__"))
    with open(space / "captioning" / "__init__.py", "a") as fh:  # shows which copy got imported
        fh.write("\nprint('captioning imported from', __file__, flush=True)\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_SERVER_NAME", "CAPTION_MODELS", "PYTHONPATH")}
    proc = subprocess.Popen([sys.executable, "app.py", "--models", str(space_models["blip"]), "--port", str(port)],
                            cwd=space, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not start within 120 s"
                time.sleep(0.5)
        assert "/caption" in info["named_endpoints"]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert rc == 0, out[-2000:]
    assert f"captioning imported from {space / 'captioning' / '__init__.py'}" in out
    assert f"serving 1 model(s) on {url}" in out and "Traceback" not in out


def test_generation_failure_is_an_error_for_that_model_only(space_app, png):
    """An exception inside generate (not a load failure) becomes that model's message."""
    broken = SimpleNamespace(family=None, prompt=None, processor=None, model=None)  # caption_images trips on it
    demo = space_app.build_demo(["org/a", "org/b"], loader=lambda entry: broken)
    app = demo.caption_space
    img = (str(png()), "pic.png")
    _, results = app.compare(img, ["org/a", "org/b"], **_settings())
    assert [r["caption"] for r in results] == [None, None]
    assert all(r["error"] == f"{r['model']}: generation failed: internal error (AttributeError); the server log "
               "has the details" for r in results)
    with pytest.raises(space_app.gr.Error, match="org/a: generation failed"):
        app.caption(img, "org/a", "", variations=1, **_settings())
