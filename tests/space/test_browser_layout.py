"""The Space's layout as a visitor meets it, in Debian's Chromium through Playwright: on a
420 px wide phone the action and its result come early and nothing is wider than the
screen; settings sit collapsed next to the action they change; models whose card numbers
do not compare say why; every tab is screenshotted at 1400 px and 420 px.

The screenshots' folder is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.space.helpers import (
    browser_marks,
    close_toasts,
    free_port,
    open_settings,
    open_space,
    pick,
    set_number,
    settings,
    shot,
    space_part,
)


def browser(fn):
    """Marks a test as a browser test (the module also holds plain ones)."""
    for mark in reversed(browser_marks()):
        fn = mark(fn)
    return fn


PHONE = (420, 860)
DESKTOP = (1400, 900)
TABS = ["Caption", "Compare", "Batch", "About"]


# ----------------------------------------------------------------------------- fixtures



@pytest.fixture(scope="module")
def val_copy(space_models, tmp_path_factory) -> Path:
    """The base model again, its card scored on the val split: its numbers do not compare
    with the base's (test split)."""
    folder = tmp_path_factory.mktemp("layout-models") / "tiny-smolvlm-val"
    shutil.copytree(space_models["base"], folder)
    doc = json.loads((folder / "metrics.json").read_text())
    doc["dataset"]["split"] = "val"
    doc["metrics"]["CIDEr"] = 0.999
    (folder / "metrics.json").write_text(json.dumps(doc))
    return folder


@pytest.fixture(scope="module")
def server(guard, space_app, space_models, val_copy):
    demo = space_app.build_demo([str(space_models["base"]), str(val_copy), str(space_models["blip"])])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **space_app.launch_kwargs())
    yield {"url": url, "demo": demo, "app": demo.caption_space}
    demo.close()




@pytest.fixture(scope="module")
def phone(chromium, server, guard):
    pg = open_space(chromium, server["url"], guard, *PHONE)
    yield pg
    pg.context.close()


@pytest.fixture(scope="module")
def desktop(chromium, server, guard):
    pg = open_space(chromium, server["url"], guard, *DESKTOP)
    yield pg
    pg.context.close()


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space-screens")
    print(f"\nSpace screenshots (each tab at {DESKTOP[0]} px and {PHONE[0]} px): {folder}")
    return folder


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[Path]:
    return sorted((shapes_dir / "images" / "test").glob("*.png"))[:2]


def no_side_scroll(page) -> tuple[int, int]:
    """(document scroll width, window inner width)."""
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


def box_bottom(page, selector: str) -> float:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not displayed"
    return box["y"] + box["height"]


# Each header and body cell of the table under ROOT (Gradio 6 draws a header <table> and
# virtual rows of grid cells): where it ends, whether that is inside the frame that holds
# the table or that frame scrolls sideways, and for headers the width of their longest word.
TABLE_BOXES = """(root) => {
  const table = root.querySelector('table');
  let frame = table;
  while (frame !== root && !['auto', 'scroll'].includes(getComputedStyle(frame).overflowX)) frame = frame.parentElement;
  const scrolls = ['auto', 'scroll'].includes(getComputedStyle(frame).overflowX)
    && frame.scrollWidth > frame.clientWidth;
  const right = frame.getBoundingClientRect().right;
  const word = (cell, text) => {
    const longest = text.split(/\\s+/).sort((a, b) => b.length - a.length)[0] || '';
    const probe = document.createElement('span');
    probe.style.cssText = 'position:absolute;display:inline-block;white-space:nowrap;visibility:hidden';
    probe.style.font = getComputedStyle(cell.querySelector('.header') || cell).font;
    probe.textContent = longest;
    document.body.appendChild(probe);
    const w = probe.getBoundingClientRect().width;
    probe.remove();
    return w;
  };
  const cells = Array.from(root.querySelectorAll('th, td, [role=gridcell]')).map(c => {
    const cs = getComputedStyle(c), header = c.tagName === 'TH';
    const text = ((header && c.querySelector('.header')) || c).innerText.trim();
    return {text, header, right: c.getBoundingClientRect().right,
            inner: c.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight),
            word: header ? word(c, text) : 0};
  });
  return {scrolls, right, cells, frame: frame === root ? 'root' : frame.className};
}"""


def no_clipped_column(page, selector: str) -> list[dict]:
    """Asserts that the table under ``selector`` clips no column: each cell ends inside the
    table's frame, or that frame scrolls sideways, and no header is narrower than its longest
    word. Returns the cells measured."""
    boxes = page.eval_on_selector(selector, TABLE_BOXES)
    cells = boxes["cells"]
    assert cells, f"no table cells under {selector}"
    for c in cells:
        assert boxes["scrolls"] or c["right"] <= boxes["right"] + 1, (selector, c, boxes["right"], boxes["frame"])
        if c["header"] and c["text"]:
            assert c["inner"] + 1 >= c["word"], f"{selector}: header {c['text']!r} is narrower than its word: {c}"
    return cells


# --------------------------------------------------------------------------- plain tests

def test_decoding_note_says_how_beams_and_variations_combine():
    note = space_part("decoding").decoding_note
    assert note(1, 0, 1) == "greedy decoding"
    assert note(3, 0, 1) == "beam search with 3 beams"
    assert note(1, 0, 3) == "the 3 best of 3 beams (beams raised to 3, one per variation)"
    assert note(4, 0, 2) == "the 2 best of 4 beams"
    assert note(1, 0.7, 3) == "sampling 3 captions at temperature 0.7"


def test_beams_with_sampling_are_refused_and_the_result_says_how_it_decoded(server, space_app, images):
    app = server["app"]
    _, timing = app.caption((str(images[0]), "pic.png"), "tiny-blip", "", 6, 1, 0, 1, 2, -1)
    assert "the 2 best of 2 beams (beams raised to 2, one per variation) · no seed needed" in timing
    with pytest.raises(space_app.gr.Error, match="beams are for temperature 0: set beams to 1"):
        app.settings(12, 2, 0.8, 1, -1, 1)
    assert app.settings(12, 1, 0.8, 1, 5, 3).num_captions == 3  # sampling with one beam stays
    assert app.settings(12, 2, 0, 1, -1, 3).num_beams == 2  # the rule in generate_kwargs raises them to 3


# ---------------------------------------------------------------------------- browser

@browser
def test_phone_shows_the_action_and_its_result_early(phone):
    """At 420 px, right after load: the Caption button and the caption box lie within two
    screen heights from the top, the settings are collapsed, nothing is wider than the screen."""
    height = PHONE[1]
    assert phone.evaluate("window.scrollY") == 0
    assert not phone.is_visible("#caption_max_new_tokens")  # collapsed by default
    assert box_bottom(phone, "#caption_btn") <= 2 * height
    assert box_bottom(phone, "#captions") <= 2 * height
    for tab in TABS:
        phone.get_by_role("tab", name=tab).click()
        phone.wait_for_timeout(300)
        width, inner = no_side_scroll(phone)
        assert width <= inner, f"{tab}: the page scrolls sideways ({width} > {inner} px)"
    # settings sit in the tabs that use them, none on About; About's tables clip no column
    assert phone.locator("[id$='_settings']:visible").count() == 0
    phone.wait_for_selector("#about_md table")
    assert {c["text"] for c in no_clipped_column(phone, "#about_md") if c["header"]} >= {"model", "CIDEr"}
    phone.wait_for_function("document.querySelector('#models_table').innerText.includes('tiny-blip')")
    no_clipped_column(phone, "#models_table")
    phone.get_by_role("tab", name="Caption").click()


@browser
def test_phone_batch_table_clips_no_column(phone, images, tmp_path):
    """A batch with a file that is not an image, at 420 px: every header and cell ends inside
    the table's frame (or that frame scrolls sideways), headers are at least as wide as their
    longest word, and the page itself does not scroll sideways."""
    phone.get_by_role("tab", name="Batch").click()
    settings(phone, "batch")
    bad = tmp_path / "not-a-picture-at-all.png"
    bad.write_text("notes")
    phone.set_input_files("#batch_files input[type=file]", [str(images[0]), str(bad)])
    pick(phone, "batch_model", "tiny-blip")
    phone.wait_for_timeout(300)  # the upload finishes before the click is queued
    phone.click("#batch_btn")
    phone.wait_for_function("document.querySelector('#batch_summary').innerText.includes('of 2')")
    phone.wait_for_function("document.querySelector('#batch_table').innerText.includes('not-a-picture-at-all')")
    cells = no_clipped_column(phone, "#batch_table")
    assert {c["text"] for c in cells if c["header"]} >= {"file", "caption", "model", "error"}, cells
    assert any("not an image" in c["text"] for c in cells), cells
    width, inner = no_side_scroll(phone)
    assert width <= inner, f"the page scrolls sideways ({width} > {inner} px)"
    close_toasts(phone)


@browser
def test_beams_are_greyed_while_sampling_and_the_rule_is_shown(desktop):
    desktop.get_by_role("tab", name="Caption").click()
    open_settings(desktop, "caption")
    set_number(desktop, "caption_temperature", 0)
    set_number(desktop, "caption_num_beams", 1)
    set_number(desktop, "caption_variations", 3)
    desktop.wait_for_function("document.querySelector('#caption_decoding').innerText.includes('raised to 3')")
    assert "the 3 best of 3 beams" in desktop.inner_text("#caption_decoding")
    set_number(desktop, "caption_temperature", 0.5)
    desktop.wait_for_selector("#caption_num_beams input[type=number][disabled]")
    desktop.wait_for_function("document.querySelector('#caption_decoding').innerText.includes('sampling 3')")
    assert desktop.input_value("#caption_num_beams input[type=number]") == "1"
    set_number(desktop, "caption_temperature", 0)
    desktop.wait_for_selector("#caption_num_beams input[type=number]:not([disabled])")
    set_number(desktop, "caption_variations", 1)


@browser
def test_compare_says_why_the_numbers_do_not_compare(desktop, images):
    desktop.get_by_role("tab", name="Compare").click()
    settings(desktop, "compare")
    desktop.set_input_files("#compare_image input[type=file]", str(images[0]))
    desktop.wait_for_selector("#compare_image img")
    desktop.wait_for_function("Array.from(document.querySelectorAll('#compare_models .token'))"
                              ".map(t => t.innerText.trim()).join('|') == 'tiny-smolvlm|tiny-smolvlm-val'")
    desktop.click("#compare_btn")
    desktop.wait_for_selector("#compare_cards .cmp-card >> nth=1")
    cards = desktop.locator("#compare_cards .cmp-card")
    assert "CIDEr 0.123" in cards.nth(0).inner_text() and "CIDEr 0.999" in cards.nth(1).inner_text()
    warn = cards.nth(1).locator(".cmp-warn").inner_text()
    assert "not comparable with tiny-smolvlm's" in warn and "different split: val vs test" in warn, warn
    assert cards.nth(0).locator(".cmp-caption").inner_text()


@browser
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1400px", "420px"])
def test_screenshot_each_tab(chromium, server, guard, screens, size):
    pg = open_space(chromium, server["url"], guard, *size)
    try:
        for tab in TABS:
            pg.get_by_role("tab", name=tab).click()
            pg.wait_for_timeout(400)  # let the tab's spinner and transitions settle
            path = shot(pg, screens, f"{tab.lower()}-{size[0]}px")
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, path
            if size == PHONE:
                width, inner = no_side_scroll(pg)
                assert width <= inner, f"{tab}: the page scrolls sideways ({width} > {inner} px)"
        # and the Caption tab's settings opened, to show them beside the action
        pg.get_by_role("tab", name="Caption").click()
        open_settings(pg, "caption")
        assert shot(pg, screens, f"caption-settings-{size[0]}px").stat().st_size > 1000
    finally:
        pg.context.close()
    assert len(list(screens.glob(f"*-{size[0]}px.png"))) == len(TABS) + 1
