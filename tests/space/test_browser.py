"""The Space served in-process on 127.0.0.1 and driven like a user would: Chromium
(Debian's, headless, through Playwright) and gradio_client, under a network guard.

Screenshots land in each test's tmp dir; set SPACE_SCREENS_DIR to also collect one per tab.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.space.helpers import (
    MAX_NEW,
    PeakRSS,
    browser_marks,
    close_toasts,
    free_port,
    open_space,
    pick,
    settings,
    shot,
)

pytestmark = browser_marks()



# ----------------------------------------------------------------------------- fixtures



@pytest.fixture(autouse=True)
def _no_network(guard):
    before = len(guard.violations)
    yield
    assert guard.violations[before:] == [], f"non-loopback network use: {guard.violations[before:]}"


@pytest.fixture(scope="module")
def server(guard, space_app, space_models):
    """The app on a free loopback port, with a working base/fine-tune pair, BLIP and a
    model folder that cannot load."""
    names = ["ft", "base", "blip", "broken"]
    demo = space_app.build_demo([str(space_models[n]) for n in names], concurrency_limit=2, max_queue=64)
    port = free_port()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **space_app.launch_kwargs())
    keys = {n: space_models[n].name for n in names}  # API ids: the folders' names, never their paths
    yield {"url": url, "demo": demo, "keys": keys, "app": demo.caption_space, "models": space_models}
    demo.close()




@pytest.fixture(scope="module")
def shared_page(chromium, server, guard):
    """One page for the module (a Gradio page takes ~3 s to start here); each test
    selects its tab and sets every setting it relies on."""
    pg = open_space(chromium, server["url"], guard)
    yield pg
    pg.context.close()


@pytest.fixture
def page(shared_page):
    return shared_page


def caption_tab(page, model: str, variations: int = 1, **kw):
    """The Caption tab with ``model`` and every setting chosen."""
    page.get_by_role("tab", name="Caption").click()
    pick(page, "caption_model", model)
    settings(page, "caption", variations=variations, **kw)


def run_caption(page, lines: int = 1) -> list[str]:
    """Click Caption and return the captions shown (the old ones are blanked first,
    since tests share the page)."""
    page.eval_on_selector("#captions textarea", "e => { e.value = '' }")
    page.click("#caption_btn")
    page.wait_for_function("(n) => { const v = document.querySelector('#captions textarea').value;"
                           " return v.length > 0 && v.split('\\n').length == n; }", arg=lines)
    return page.input_value("#captions textarea").split("\n")


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[Path]:
    return sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]


def core(captioners, name, paths, **settings):
    from captioning.generation import GenerationSettings, caption_images
    from captioning.images import load_image

    s = GenerationSettings(**settings)
    return caption_images(captioners(name), [load_image(p) for p in paths], None, s)


# --------------------------------------------------------------------------- browser

def test_caption_matches_core(page, server, images, core_captioners, tmp_path):
    caption_tab(page, "tiny-smolvlm-ft", beams=2)
    page.set_input_files("#caption_image input[type=file]", str(images[0]))
    page.wait_for_selector("#caption_image img")
    shown = run_caption(page)
    expected = core(core_captioners, "ft", [images[0]], max_new_tokens=MAX_NEW, num_beams=2)[0]
    assert shown == expected
    page.wait_for_function("document.querySelector('#caption_time').innerText.includes(' s')")
    assert "generation" in page.inner_text("#caption_time")
    # the card line shows the model's metrics, and the prompt box is live for instruct models
    assert "CIDEr 0.876" in page.inner_text("#caption_card")
    assert not page.is_disabled("#prompt textarea")
    shot(page, tmp_path, "caption")


def test_example_image_captions(page, images):
    """An example image captions, and choosing it clears the result of the image before."""
    caption_tab(page, "tiny-blip")
    page.set_input_files("#caption_image input[type=file]", str(images[0]))
    page.wait_for_selector("#caption_image img")
    assert run_caption(page)[0]
    page.wait_for_function("document.querySelector('#caption_time').innerText.includes('generation')")
    page.locator("#caption_examples .gallery-item").nth(1).click()  # the house picture
    page.wait_for_selector("#caption_image img[src*='house']")
    page.wait_for_function("document.querySelector('#captions textarea').value === ''"
                           " && !document.querySelector('#caption_time').innerText.includes('generation')")
    assert run_caption(page)[0]


def test_prompt_disabled_for_blip(page):
    caption_tab(page, "tiny-blip")
    page.wait_for_function("document.querySelector('#prompt textarea').disabled")
    assert "without a prompt" in page.get_attribute("#prompt textarea", "placeholder")
    pick(page, "caption_model", "tiny-smolvlm")
    page.wait_for_function("!document.querySelector('#prompt textarea').disabled")


def test_three_variations(page, images, core_captioners, tmp_path):
    caption_tab(page, "tiny-smolvlm-ft", variations=3, temperature=0.9, seed=7)
    page.set_input_files("#caption_image input[type=file]", str(images[1]))
    page.wait_for_selector("#caption_image img")
    shown = run_caption(page, lines=3)
    assert len(shown) == 3 and len(set(shown)) == 3, shown
    expected = core(core_captioners, "ft", [images[1]], max_new_tokens=MAX_NEW, do_sample=True, temperature=0.9,
                    num_captions=3, seed=7)[0]
    assert shown == expected
    shot(page, tmp_path, "variations")


def test_failed_action_clears_the_previous_result(page, server, images):
    """A click that fails (a model that cannot load) leaves no caption of another model on
    screen: every action clears its old result first."""
    caption_tab(page, "tiny-blip")
    page.set_input_files("#caption_image input[type=file]", str(images[0]))
    page.wait_for_selector("#caption_image img")
    assert run_caption(page)[0]
    broken = next(i.label for i in server["app"].infos if i.entry.id == str(server["models"]["broken"]))
    pick(page, "caption_model", broken)
    page.click("#caption_btn")
    page.locator(".toast-body").filter(has_text="failed to load").wait_for()
    assert page.input_value("#captions textarea") == ""
    assert "generation" not in page.inner_text("#caption_time")
    close_toasts(page)


def test_compare_base_vs_finetuned(page, server, images, core_captioners, tmp_path):
    page.get_by_role("tab", name="Compare").click()
    settings(page, "compare")
    page.set_input_files("#compare_image input[type=file]", str(images[2]))
    page.wait_for_selector("#compare_image img")
    page.click("#preset_0")  # "Base vs fine-tuned": the release names its base
    page.wait_for_function("Array.from(document.querySelectorAll('#compare_models .token'))"
                           ".map(t => t.innerText.trim()).join('|') == 'tiny-smolvlm|tiny-smolvlm-ft'")
    chosen = page.locator("#compare_models .token").all_inner_texts()
    assert [c.strip() for c in chosen] == ["tiny-smolvlm", "tiny-smolvlm-ft"]
    page.click("#compare_btn")
    page.wait_for_selector("#compare_cards .cmp-card >> nth=1")
    cards = page.locator("#compare_cards .cmp-card")
    assert cards.count() == 2
    for i, name in enumerate(["base", "ft"]):
        card = cards.nth(i)
        expected = core(core_captioners, name, [images[2]], max_new_tokens=MAX_NEW)[0][0]
        assert card.locator(".cmp-caption").inner_text() == expected
        assert " s" in card.locator(".cmp-latency").inner_text()
        metrics = card.locator(".cmp-metrics").inner_text()
        assert "CIDEr" in metrics and "BLEU-4" in metrics and "eval on test, 16 images, plain references" in metrics
    assert "CIDEr 0.123" in cards.nth(0).inner_text() and "CIDEr 0.876" in cards.nth(1).inner_text()
    shot(page, tmp_path, "compare")


def test_compare_corrupt_upload_clears_the_cards(page, tmp_path):
    """The cards of the previous comparison go when a file that is not an image replaces
    its image, and the refusal says so in their place."""
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#compare_cards .cmp-card")  # left by the comparison before
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not a picture")
    page.set_input_files("#compare_image input[type=file]", str(bad))
    page.wait_for_selector("#compare_cards .upload-refused")
    assert page.locator("#compare_cards .cmp-card").count() == 0
    assert "notes.png: not an image file we can read" in page.inner_text("#compare_cards")
    close_toasts(page)


def test_batch_two_images_and_csv(page, images, core_captioners, tmp_path):
    page.get_by_role("tab", name="Batch").click()
    settings(page, "batch")
    page.set_input_files("#batch_files input[type=file]", [str(images[0]), str(images[1])])
    pick(page, "batch_model", "tiny-blip")
    page.wait_for_timeout(300)  # the upload finishes before the click is queued
    page.click("#batch_btn")
    page.wait_for_function("document.querySelector('#batch_summary').innerText.includes('2 of 2')")
    with page.expect_download() as dl:
        page.click("#batch_csv")
    path = tmp_path / "captions.csv"
    dl.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    expected = core(core_captioners, "blip", images[:2], max_new_tokens=MAX_NEW)
    assert [r["file"] for r in rows] == [images[0].name, images[1].name]
    assert [r["caption"] for r in rows] == [e[0] for e in expected]
    assert {r["model"] for r in rows} == {"tiny-blip"} and all(r["error"] == "" for r in rows)
    assert images[0].name in page.inner_text("#batch_table")
    shot(page, tmp_path, "batch")


def test_corrupt_upload_refused_and_old_result_cleared(page, images, tmp_path):
    """A corrupt file is refused at upload, in plain words, and the caption of the image
    before it goes: nothing on screen describes an image that is not there."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    caption_tab(page, "tiny-smolvlm")
    page.set_input_files("#caption_image input[type=file]", str(images[0]))
    page.wait_for_selector("#caption_image img")
    assert run_caption(page)[0]
    page.wait_for_function("document.querySelector('#caption_time').innerText.includes('generation')")
    page.set_input_files("#caption_image input[type=file]", str(bad))
    toast = page.locator(".toast-body").filter(has_text="broken.png")
    toast.wait_for()
    text = toast.inner_text()
    assert "broken.png: not an image file we can read" in text and "PNG, JPEG" in text, text
    page.wait_for_function("document.querySelector('#caption_time').innerText.includes('Not used')")
    shown = page.inner_text("#caption_time")
    assert "broken.png: not an image file we can read" in shown and "generation" not in shown
    assert page.input_value("#captions textarea") == ""
    page.wait_for_function("!document.querySelector('#caption_image img')")  # the file is taken off the input
    content = page.content()
    assert "Pillow" not in content and "PIL" not in content and "Traceback" not in content
    shot(page, tmp_path, "error")
    close_toasts(page)
    # Caption now asks for an image instead of captioning the refused one
    page.click("#caption_btn")
    page.locator(".toast-body").filter(has_text="Upload an image first").wait_for()
    assert page.input_value("#captions textarea") == ""
    close_toasts(page)


def test_api_page_sample_runs_as_shown(chromium, server, guard, tmp_path):
    """The *Use via API* page's Python sample for /caption, run as shown (only gradio_client's
    telemetry switched off): it passes one of the Space's own examples by URL, which the
    Space reads from disk."""
    pg = open_space(chromium, server["url"], guard)
    try:
        pg.get_by_text("Use via API or MCP").click()
        pg.locator("li.snippet", has_text="Python").click()  # with MCP on, the panel opens on MCP
        snippet = pg.locator("code:visible").filter(has_text='api_name="/caption"').first
        snippet.wait_for()
        code = snippet.inner_text().strip()
        shot(pg, tmp_path, "api_page")
    finally:
        pg.context.close()
    assert "handle_file('" + server["url"].rstrip("/") + "/gradio_api/file=" in code, code
    assert "model=" in code and "max_new_tokens=30" in code, code
    client_line = f'Client("{server["url"].rstrip("/")}")'
    assert client_line in code, code
    script = tmp_path / "sample.py"
    script.write_text(code.replace(client_line, client_line[:-1] + ", analytics_enabled=False)"))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "generation" in run.stdout, run.stdout


def test_about_tab(page, server, tmp_path):
    page.get_by_role("tab", name="About").click()
    page.wait_for_selector("#about_md table")
    about = page.inner_text("#about_md")
    for label in ("tiny-smolvlm-ft", "tiny-smolvlm", "tiny-blip", "broken-model"):
        assert label in about
    assert "0.876" in about and "gradio_client" in about
    page.click("#models_refresh")
    # models used by the earlier tests are listed as in memory, the one that cannot load as failed
    page.wait_for_function("document.querySelector('#models_table').innerText.includes('in memory')")
    page.wait_for_timeout(500)  # let the status spinner fade before the screenshot
    rows = page.inner_text("#models_table")
    assert "failed: " in rows and rows.count("in memory") == 3, rows
    shot(page, tmp_path, "about")


# ------------------------------------------------------------------------ gradio_client

@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], analytics_enabled=False, verbose=False)


def test_every_event_has_api_name(server, client):
    demo = server["demo"]
    names = {fn.api_name for fn in demo.fns.values()}
    assert None not in names and "" not in names
    public = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert public == {"/caption", "/compare", "/batch", "/models"}  # the UI's plumbing is private


def test_client_calls_each_api_name(server, client, images, core_captioners):
    from gradio_client import handle_file

    keys = server["keys"]
    text, timing = client.predict(handle_file(str(images[0])), keys["base"], "", MAX_NEW, 1, 0, 1, 1, -1,
                                  api_name="/caption")
    assert text == core(core_captioners, "base", [images[0]], max_new_tokens=MAX_NEW)[0][0]
    assert "generation" in timing
    text, _ = client.predict(handle_file(str(images[0])), keys["base"], "Describe the shapes.", MAX_NEW, 1, 0, 1,
                             2, -1, api_name="/caption")
    assert len(text.split("\n")) == 2

    html_cards, results = client.predict(handle_file(str(images[0])), [keys["ft"], keys["blip"]], MAX_NEW, 1, 0,
                                         1, -1, api_name="/compare")
    assert [r["name"] for r in results] == ["tiny-smolvlm-ft", "tiny-blip"]
    assert all(r["caption"] and r["error"] is None for r in results)
    assert results[1]["card_metrics"]["CIDEr"] == pytest.approx(0.456)
    assert results[1]["card_metrics"]["n_images"] == 16 and results[1]["card_metrics"]["split"] == "test"
    assert "cmp-card" in html_cards

    table, csv_path, json_path, summary = client.predict(
        [handle_file(str(images[0])), handle_file(str(images[1]))], keys["blip"], MAX_NEW, 1, 0, 1, -1,
        api_name="/batch")
    rows = json.loads(Path(json_path).read_text())
    assert [r["file"] for r in rows] == [images[0].name, images[1].name]
    assert [r[1] for r in table["data"]] == [r["caption"] for r in rows]
    assert Path(csv_path).read_text().startswith("file,caption,error,model,model_name,max_new_tokens")
    assert "2 of 2" in summary

    models = client.predict(api_name="/models")
    assert [m["model"] for m in models] == list(keys.values())
    assert server["app"].preset(0) == [keys["base"], keys["ft"]]


def test_client_errors_are_messages(client, server, tmp_path, images):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    keys = server["keys"]
    bad = tmp_path / "junk.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(AppError, match="junk.jpg: "):
        client.predict(handle_file(str(bad)), keys["base"], "", MAX_NEW, 1, 0, 1, 1, -1, api_name="/caption")
    with pytest.raises(AppError, match="captions without a prompt"):
        client.predict(handle_file(str(images[0])), keys["blip"], "a photo of", MAX_NEW, 1, 0, 1, 1, -1,
                       api_name="/caption")
    with pytest.raises(AppError, match="unknown model 'nobody/nothing'"):
        client.predict(handle_file(str(images[0])), "nobody/nothing", "", MAX_NEW, 1, 0, 1, 1, -1,
                       api_name="/caption")
    with pytest.raises(AppError, match="Pick 2 to 4"):
        client.predict(handle_file(str(images[0])), [keys["base"]], MAX_NEW, 1, 0, 1, -1, api_name="/compare")
    # the server never fetches a URL it is given (and the network guard would see it try)
    with pytest.raises(AppError, match="URLs are not fetched"):
        client.predict(handle_file("https://example.com/cat.png"), keys["base"], "", MAX_NEW, 1, 0, 1, 1, -1,
                       api_name="/caption")
    # a zip with one image, one corrupt image and a path-escaping name: per-file rows
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(images[0], "pics/one.png")
        zf.writestr("../../escape.png", b"garbage")
        zf.writestr("notes.txt", b"skipped")
    table, *_ = client.predict([handle_file(str(z))], keys["blip"], MAX_NEW, 1, 0, 1, -1, api_name="/batch")
    rows = table["data"]
    assert [r[0] for r in rows] == ["set.zip/pics/one.png", "set.zip/escape.png"]
    assert rows[0][1] and not rows[0][3]
    assert rows[1][1] == "" and "not an image" in rows[1][3]


def test_broken_model_leaves_others_usable(client, server, images):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    keys = server["keys"]
    with pytest.raises(AppError, match="broken-model failed to load"):
        client.predict(handle_file(str(images[0])), keys["broken"], "", MAX_NEW, 1, 0, 1, 1, -1,
                       api_name="/caption")
    text, _ = client.predict(handle_file(str(images[0])), keys["blip"], "", MAX_NEW, 1, 0, 1, 1, -1,
                             api_name="/caption")
    assert text
    _, results = client.predict(handle_file(str(images[0])), [keys["broken"], keys["ft"]], MAX_NEW, 1, 0, 1, -1,
                                api_name="/compare")
    assert "failed to load" in results[0]["error"] and results[0]["caption"] is None
    assert results[1]["caption"] and results[1]["error"] is None
    status = {m["model"]: m["status"] for m in client.predict(api_name="/models")}
    assert status[keys["broken"]].startswith("failed:") and status[keys["ft"]] == "in memory"


def test_network_guard_is_active(guard):
    import socket

    with pytest.raises(OSError, match="network guard"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    assert guard.violations and "192.0.2.1" in guard.violations[-1]
    guard.violations.clear()


# ---------------------------------------------------------------------------- load test

def test_load_16_clients_x_10(server, images, core_captioners):
    """16 concurrent gradio_client clients x 10 caption requests each (from another
    process): every request gets the captioning core's own caption for its image, and the
    server process's memory stays bounded. Only correctness is asserted; the latencies of
    the same load are measured by bench/space_load.py."""
    from gradio_client import Client, handle_file

    key = server["keys"]["base"]
    expect = {str(p): caps[0] for p, caps in zip(images, core(core_captioners, "base", images, max_new_tokens=4))}
    warm = Client(server["url"], analytics_enabled=False, verbose=False)
    for _ in range(3):
        warm.predict(handle_file(str(images[0])), key, "", 4, 1, 0, 1, 1, -1, api_name="/caption")
    with PeakRSS() as rss:
        run = subprocess.run([sys.executable, str(Path(__file__).with_name("load_clients.py")), server["url"], key,
                              *map(str, images), "--clients", "16", "--requests", "10",
                              "--expect", json.dumps(expect)],
                             capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["failures"] == 0, out["first_failures"]
    assert out["ok"] == 160
    assert out["guard_violations"] == []
    # a tiny model: growth beyond ~200 MB would mean per-request leaks (images, files, state)
    assert rss.peak - rss.before < 200 * 2**20, f"server RSS grew {(rss.peak - rss.before) / 2**20:.0f} MB under load"
