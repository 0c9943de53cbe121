"""The Space's public API as programs meet it: gradio_client and an MCP client over 127.0.0.1.

The whole public surface is /caption, /compare, /batch and /models; every parameter but the
image has a default, integers are integers, models are named by a stable id, and the same
handlers answer MCP tool calls.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.space.helpers import free_port

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
]

PUBLIC = {"/caption", "/compare", "/batch", "/models"}
INTEGERS = {"/caption": {"max_new_tokens", "num_beams", "variations", "seed"},
            "/compare": {"max_new_tokens", "num_beams", "seed"},
            "/batch": {"max_new_tokens", "num_beams", "seed"}}




@pytest.fixture(scope="module")
def server(guard, space_app, space_models):
    """The Space on a loopback port with MCP on (the default), serving blip first: the
    default model of a call that names none."""
    names = ["blip", "base", "ft", "broken"]
    demo = space_app.build_demo([str(space_models[n]) for n in names])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **space_app.launch_kwargs())
    yield {"url": url, "demo": demo, "app": demo.caption_space}
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], analytics_enabled=False, verbose=False)


@pytest.fixture(scope="module")
def api_info(client):
    return client.view_api(return_format="dict", print_info=False)


@pytest.fixture(scope="module")
def image(shapes_dir) -> Path:
    return sorted((shapes_dir / "images" / "test").glob("*.png"))[0]


def core_caption(captioners, name, path, **settings) -> list[str]:
    from captioning.generation import GenerationSettings, caption_images
    from captioning.images import load_image

    return caption_images(captioners(name), [load_image(path)], None, GenerationSettings(**settings))[0]


# ------------------------------------------------------------------------- the surface

def test_public_endpoints_are_exactly_the_four(api_info, server):
    assert set(api_info["named_endpoints"]) == PUBLIC
    assert api_info["unnamed_endpoints"] == {}
    # the UI's own events exist, but are private: not callable by name either
    from gradio_client import Client

    names = {fn.api_name: fn.api_visibility for fn in server["demo"].fns.values()}
    assert {f"/{n}" for n, v in names.items() if v == "public"} == PUBLIC
    assert "model_info" in names and names["model_info"] == "private"
    with pytest.raises(ValueError, match="Cannot find a function"):
        Client(server["url"], analytics_enabled=False, verbose=False).predict("x", api_name="/model_info")


def test_parameters_have_defaults_and_integers_are_integers(api_info):
    for endpoint, integers in INTEGERS.items():
        params = {p["parameter_name"]: p for p in api_info["named_endpoints"][endpoint]["parameters"]}
        assert integers <= set(params), (endpoint, sorted(params))
        for name in integers:
            assert params[name]["type"]["type"] == "integer", (endpoint, name, params[name]["type"])
        required = [n for n, p in params.items() if not p["parameter_has_default"]]
        assert required == (["files"] if endpoint == "/batch" else ["image"]), (endpoint, required)
    assert api_info["named_endpoints"]["/models"]["parameters"] == []


def test_descriptions_come_from_the_docstrings(api_info):
    caption = api_info["named_endpoints"]["/caption"]
    assert caption["description"].startswith("Caption one image with one model")
    params = {p["parameter_name"]: p for p in caption["parameters"]}
    assert params["max_new_tokens"]["parameter_default"] == 30 and params["seed"]["parameter_default"] == -1


# ----------------------------------------------------------------------- gradio_client

def test_caption_with_only_an_image(client, server, image, core_captioners):
    from gradio_client import handle_file

    text, timing = client.predict(handle_file(str(image)), api_name="/caption")
    # the defaults: the first served model (blip), 30 new tokens, greedy
    assert text == core_caption(core_captioners, "blip", image, max_new_tokens=30)[0]
    assert "generation" in timing and "no seed needed" in timing
    # keyword arguments, as the README shows them; the seed drawn is reported and reproduces the samples
    text, timing = client.predict(handle_file(str(image)), model="tiny-smolvlm", max_new_tokens=6, temperature=0.8,
                                  variations=3, seed=-1, api_name="/caption")
    seed = int(timing.rsplit("seed ", 1)[1])
    assert len(text.splitlines()) == 3
    assert client.predict(handle_file(str(image)), model="tiny-smolvlm", max_new_tokens=6, temperature=0.8,
                          variations=3, seed=seed, api_name="/caption")[0] == text


def test_models_are_named_by_a_stable_id(client, server, space_models):
    models = client.predict(api_name="/models")
    ids = [m["model"] for m in models]
    assert ids == ["tiny-blip", "tiny-smolvlm", "tiny-smolvlm-ft", "broken-model"]
    assert not any(str(space_models["blip"].parent) in json.dumps(m) for m in models)  # no server paths
    blip = models[0]
    assert blip["CIDEr"] == pytest.approx(0.456) and isinstance(blip["CIDEr"], float)
    assert isinstance(blip["n_images"], int) and blip["status"] in ("not loaded", "in memory")
    assert models[2]["base"] == "tiny-smolvlm"  # a served base, by its id
    assert models[3]["CIDEr"] is None
    # the dropdowns hold the same ids, under display names
    dropdown = next(c for c in server["demo"].config["components"] if c["props"].get("elem_id") == "caption_model")
    assert [c[1] for c in dropdown["props"]["choices"]] == ids


def test_compare_returns_numbers_as_numbers(client, image):
    from gradio_client import handle_file

    _, results = client.predict(handle_file(str(image)), ["tiny-smolvlm", "tiny-smolvlm-ft"], 6,
                                api_name="/compare")
    assert [r["model"] for r in results] == ["tiny-smolvlm", "tiny-smolvlm-ft"]
    assert all(isinstance(r["seconds"], float) and r["caption"] for r in results)
    assert isinstance(results[1]["card_metrics"]["CIDEr"], float) and results[0]["seed"] is None


def test_wrong_model_is_one_clean_error(client, image, capfd):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    capfd.readouterr()
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(image)), "/srv/models/nothing", api_name="/caption")
    message = str(err.value)
    assert "unknown model '/srv/models/nothing': use one of tiny-blip, tiny-smolvlm" in message
    assert "\n" not in message.strip()
    with pytest.raises(AppError, match="unknown model 'nobody'"):
        client.predict(handle_file(str(image)), ["tiny-blip", "nobody"], api_name="/compare")
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err


def test_batch_exports_carry_model_settings_and_seed(client, image, tmp_path):
    from gradio_client import handle_file

    table, csv_path, json_path, summary = client.predict(
        [handle_file(str(image))], "tiny-smolvlm", 5, 1, 0.8, 0.9, -1, api_name="/batch")
    rows = json.loads(Path(json_path).read_text())
    assert len(rows) == 1 and rows[0]["caption"] == table["data"][0][1]
    row = rows[0]
    assert (row["model"], row["model_name"], row["max_new_tokens"], row["num_beams"]) == \
        ("tiny-smolvlm", "tiny-smolvlm", 5, 1)
    assert row["temperature"] == pytest.approx(0.8) and row["top_p"] == pytest.approx(0.9)
    assert isinstance(row["seed"], int) and f"seed {row['seed']}" in summary and " s · " in summary
    exported = next(csv.DictReader(io.StringIO(Path(csv_path).read_text())))
    assert exported["model"] == "tiny-smolvlm" and exported["seed"] == str(row["seed"])
    # the seed shown reproduces the sample
    again, *_ = client.predict([handle_file(str(image))], "tiny-smolvlm", 5, 1, 0.8, 0.9, row["seed"],
                               api_name="/batch")
    assert again["data"][0][1] == row["caption"]


def test_api_page_sample_call_works(client, api_info, server, image):
    """The API page's sample passes the image parameter's example as a URL: it is one of
    the Space's own examples, read from disk; other URLs are still refused, unfetched."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    example = api_info["named_endpoints"]["/caption"]["parameters"][0]["example_input"]
    url = example["url"]
    assert url.startswith(server["url"].rstrip("/") + "/gradio_api/file=") and "/space/examples/" in url
    text, _ = client.predict(handle_file(url), api_name="/caption")
    assert text
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:  # and the URL opens in a browser as well
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    # a file uploaded to this Space, named by its URL (how MCP clients' upload_file_to_gradio hands files over)
    import httpx

    with open(image, "rb") as fh:
        uploaded = httpx.post(server["url"] + "gradio_api/upload", files={"files": fh}).json()
    text_up, _ = client.predict(handle_file(server["url"] + "gradio_api/file=" + uploaded[0]), api_name="/caption")
    assert text_up == client.predict(handle_file(str(image)), api_name="/caption")[0]
    for other in ("https://example.com/cat.png", server["url"] + "gradio_api/file=/etc/passwd",
                  server["url"] + "gradio_api/file=" + uploaded[0] + "/../../../etc/passwd"):
        with pytest.raises(AppError, match="URLs are not fetched"):
            client.predict(handle_file(other), api_name="/caption")


# ------------------------------------------------------------------------------- MCP

def test_mcp_lists_the_tools_and_captions_like_the_api(server, client, image):
    from gradio_client import handle_file
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    expected, _ = client.predict(handle_file(str(image)), "tiny-smolvlm", api_name="/caption")
    data_url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()

    async def talk():
        async with streamable_http_client(server["url"] + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {t.name: t for t in (await session.list_tools()).tools}
                result = await session.call_tool("caption", {"image": data_url, "model": "tiny-smolvlm"})
                return tools, result

    tools, result = asyncio.run(talk())
    assert set(tools) == {"caption", "compare", "batch", "models"}
    schema = tools["caption"].inputSchema
    assert schema["required"] == ["image"] and schema["properties"]["num_beams"]["type"] == "integer"
    assert "Caption one image" in tools["caption"].description
    assert not result.isError, result
    texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
    # Gradio hands a tool's several outputs back as the text of a Python list
    captions, timing = ast.literal_eval(texts[0])
    assert captions == expected and "generation" in timing


def test_mcp_is_on_by_default_and_can_be_turned_off(space_app, monkeypatch):
    assert space_app.launch_kwargs()["mcp_server"] is True
    assert space_app.launch_kwargs(space_app.mcp_wanted(no_mcp=True))["mcp_server"] is False
    assert space_app.mcp_wanted(env={}) is True
    assert space_app.mcp_wanted(env={"CAPTION_MCP": "0"}) is False
    assert space_app.mcp_wanted(env={"CAPTION_MCP": "off"}) is False
    seen = []

    def launch(self, **kwargs):
        seen.append(kwargs["mcp_server"])
        raise KeyboardInterrupt  # as Ctrl-C would: main closes the demo and returns 0

    monkeypatch.setattr(space_app.gr.Blocks, "launch", launch)
    monkeypatch.delenv("CAPTION_MCP", raising=False)
    assert space_app.main(["--models", "org/a"]) == 0
    assert space_app.main(["--models", "org/a", "--no-mcp"]) == 0
    monkeypatch.setenv("CAPTION_MCP", "0")
    assert space_app.main(["--models", "org/a"]) == 0
    assert seen == [True, False, False]


# -------------------------------------------------------------- refusals, on every channel

def _http_error(url: str, api: str, data: list) -> str | None:
    """The error text a plain HTTP caller gets (``POST /gradio_api/call/<api>``, then its stream)."""
    import httpx

    event = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/{api}/{event}", timeout=300).text
    assert "event: error" in stream, stream
    return json.loads(stream.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])["error"]


def _mcp_error(url: str, tool: str, arguments: dict) -> str:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def talk():
        async with streamable_http_client(url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool(tool, arguments)

    result = asyncio.run(talk())
    assert result.isError, result
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def test_a_refusal_reads_the_same_on_the_page_the_api_and_mcp(space_app, server, client, image, monkeypatch):
    """What a visitor reads is what gradio_client, a plain HTTP caller and an MCP client get:
    for a refusal a handler wrote (a damaged model), for a failure that was no gr.Error to
    begin with (a full disk while writing the batch files, which Gradio used to send as
    ``{"error": null}``) and for a request Gradio itself refuses (a plain HTTP call missing
    inputs)."""
    import errno

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from tests.space.helpers import space_part

    app, url = server["app"], server["url"]
    data_url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    upload = {"url": data_url, "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(space_app.gr.Error) as page:
        app.caption((str(image), image.name), "broken-model")
    shown = page.value.message
    assert "broken-model failed to load" in shown
    with pytest.raises(AppError) as api:
        client.predict(handle_file(str(image)), "broken-model", api_name="/caption")
    assert str(api.value) == shown
    assert _http_error(url, "caption", [upload, "broken-model", "", 30, 1, 0, 1, 1, -1]) == shown
    assert _mcp_error(url, "caption", {"image": data_url, "model": "broken-model"}) == shown

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(space_part("batch_files"), "write_atomic", full)
    with pytest.raises(AppError) as api:
        client.predict([handle_file(str(image))], "tiny-blip", 5, api_name="/batch")
    # the file's name (each batch writes its own), not where the server keeps it
    name, said = str(api.value).split(": ", 1)
    assert name.startswith("captions-") and name.endswith(".csv")
    assert said.startswith("no space left on the device; free some space")
    import httpx

    with open(image, "rb") as fh:  # a file input takes an uploaded file, not a data: URL
        uploaded = httpx.post(url + "gradio_api/upload", files={"files": fh}).json()[0]
    files = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}]
    assert _http_error(url, "batch", [files, "tiny-blip", 5, 1, 0, 1, -1]).split(": ", 1)[1] == said

    missing = _http_error(url, "caption", [upload])  # gradio_client fills in the defaults; plain HTTP does not
    assert missing and "input values (needed: 9, got: 1)" in missing


def test_no_server_path_in_any_api_result(space_app, guard, space_models, tiny_models, image, tmp_path,
                                          tmp_path_factory):
    """A training output that names its base by the folder it was trained from (not served
    here) and was scored on a local dataset folder, and a model whose weights are cut short:
    /models, /caption, /compare and /batch name them by id, folder name or file name only."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    trained = tmp_path / "trained"
    shutil.copytree(space_models["ft"], trained)
    for name in ("README.md", "release.json"):  # a training output has neither
        (trained / name).unlink()
    cfg = yaml.safe_load((trained / "train_config.yaml").read_text())
    cfg["model"]["name_or_path"] = str(space_models["base"])
    (trained / "train_config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = json.loads((trained / "metrics.json").read_text())
    metrics["dataset"]["source"] = str(tmp_path / "data" / "shapes")
    (trained / "metrics.json").write_text(json.dumps(metrics))
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_models["blip"], damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:100])

    demo = space_app.build_demo([str(trained), str(damaged)])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **space_app.launch_kwargs(mcp=False))
    try:
        client = Client(url, analytics_enabled=False, verbose=False)
        said = [client.predict(api_name="/models"),
                client.predict(handle_file(str(image)), "trained", max_new_tokens=4, api_name="/caption"),
                client.predict(handle_file(str(image)), ["trained", "damaged"], 4, api_name="/compare")]
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(image)), "damaged", api_name="/caption")
        said.append(str(err.value))
        table, _, json_path, summary = client.predict([handle_file(str(image))], "trained", 4, api_name="/batch")
        said += [table, Path(json_path).read_text(), summary, client.predict(api_name="/models")]
    finally:
        demo.close()
    text = json.dumps(said)
    assert str(tmp_path_factory.getbasetemp()) not in text, text
    models = said[0]
    assert models[0]["base"] == "<local>/tiny-smolvlm"  # a folder on the server, by its name
    assert said[2][1][0]["card_metrics"]["dataset"] == "<local>/shapes"
    assert said[-1][1]["status"].startswith("failed: model.safetensors: ")
