"""Helpers shared by the Space tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import ipaddress
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP_PATH = REPO / "space" / "app.py"
#: the package beside app.py holding the Space's parts
PARTS = "caption_space"


def browser_marks() -> list:
    """The marks of a browser test: ``browser``, and the warnings of Gradio's queue calling
    pandas options that pandas 3 deprecates (not ours to fix)."""
    import pytest

    return [pytest.mark.browser,
            pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
            pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
            pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'")]


def _space_importable() -> None:
    # app.py imports its parts from its own folder, where `python app.py` finds them; the
    # end of sys.path, so nothing else is shadowed by space/'s files
    if str(APP_PATH.parent) not in sys.path:
        sys.path.append(str(APP_PATH.parent))


def load_app_module(name: str = "space_app"):
    """Import space/app.py as a module (space/ is a Space folder, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    _space_importable()
    spec = importlib.util.spec_from_file_location(name, APP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def space_part(name: str):
    """A module of the Space's parts (``space_part("handlers")``: caption_space/handlers.py)."""
    _space_importable()
    return importlib.import_module(f"{PARTS}.{name}")


@contextlib.contextmanager
def fresh_app_module(name: str):
    """app.py and its parts imported anew (as a new process would), as module ``name``;
    afterwards the modules imported before are back in place, so other tests keep theirs."""
    def ours(mod: str) -> bool:
        return mod == name or mod == PARTS or mod.startswith(PARTS + ".")

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for k in saved:
        del sys.modules[k]
    try:
        yield load_app_module(name)
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


# ------------------------------------------------------------------------ network guard

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host.lower() in _LOOPBACK_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkGuard:
    """Refuses (and records) every connection or name lookup outside loopback, in
    every thread of this process (the Gradio server runs in-process)."""

    def __init__(self):
        self.violations: list[str] = []
        self._saved = None

    def _check(self, what: str, address) -> None:
        if isinstance(address, (str, bytes)):  # AF_UNIX
            return
        host = address[0] if isinstance(address, tuple) and address else address
        if not _is_loopback(host):
            self.violations.append(f"{what} {address!r}")
            raise OSError(f"network guard: {what} to {address!r} is outside loopback")

    def install(self) -> NetworkGuard:
        guard = self
        orig_connect, orig_connect_ex = socket.socket.connect, socket.socket.connect_ex
        orig_getaddrinfo = socket.getaddrinfo

        def connect(sock, address):
            guard._check("connect", address)
            return orig_connect(sock, address)

        def connect_ex(sock, address):
            guard._check("connect_ex", address)
            return orig_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            guard._check("getaddrinfo", (host,))
            return orig_getaddrinfo(host, *args, **kwargs)

        self._saved = (orig_connect, orig_connect_ex, orig_getaddrinfo)
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        socket.getaddrinfo = getaddrinfo
        return self

    def uninstall(self) -> None:
        if self._saved:
            socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = self._saved
            self._saved = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRSS:
    """The resident memory of this process before and at its peak while the block runs,
    sampled every 50 ms in a thread (the Space serves in-process)."""

    def __enter__(self) -> PeakRSS:
        import threading

        import psutil

        self._proc = psutil.Process()
        self.before = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


# --------------------------------------------------------------------- browser helpers

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
TIMEOUT_MS = 60_000
MAX_NEW = 12  # the browser tests' max new tokens: short captions keep every request fast


def launch_chromium(playwright, home: Path):
    """Debian's Chromium, headless, with its profile under ``home``."""
    import os

    import pytest

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it via .ci/run)")
    os.environ.setdefault("XDG_CONFIG_HOME", str(home))
    os.environ.setdefault("XDG_CACHE_HOME", str(home))
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_space(browser, url: str, guard: NetworkGuard, width: int = 1280, height: int = 900):
    """A page of the Space at ``url`` in a new context of ``width`` x ``height``, loaded;
    requests leaving loopback are aborted and recorded as violations. Close its context."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)

    def route(r):
        target = r.request.url
        if target.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
            r.continue_()
        else:
            guard.violations.append(f"page request {target}")
            r.abort()

    pg.route("**/*", route)
    pg.goto(url)
    pg.wait_for_selector("#caption_btn")
    return pg


def set_number(page, elem_id: str, value) -> None:
    """Type ``value`` into a slider's or number's box and wait until the component holds it.

    Right after the page loads, a re-render can put the old value back after the box was
    filled (a fresh-clone run once captioned with 30 new tokens instead of 12): the box is
    typed again until it and the slider's range agree with ``value``, and it fails loudly
    if they never do."""
    box = page.locator(f"#{elem_id} input[type=number]")
    slider = page.locator(f"#{elem_id} input[type=range]")
    want = str(value)
    for _ in range(5):
        box.fill(want)
        box.press("Enter")
        page.wait_for_timeout(100)
        held = [box.input_value()] + ([slider.input_value()] if slider.count() else [])
        if all(float(v) == float(want) for v in held):
            return
    raise AssertionError(f"#{elem_id} does not take {want}: it shows {held}")


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in a dropdown."""
    page.click(f"#{elem_id} input[role=combobox]")
    page.get_by_role("option", name=option, exact=True).click()


def open_settings(page, tab: str) -> None:
    """Open a tab's settings (collapsed by default) unless they are open."""
    if not page.is_visible(f"#{tab}_max_new_tokens"):
        page.click(f"#{tab}_settings .label-wrap")
        page.wait_for_selector(f"#{tab}_max_new_tokens", state="visible")


def settings(page, tab: str, *, max_new_tokens=MAX_NEW, beams=1, temperature=0, top_p=1, seed=-1,
             variations=None) -> None:
    """Set every generation setting of ``tab`` (tests share one page). Temperature first:
    beams are greyed while sampling."""
    open_settings(page, tab)
    for name, value in (("max_new_tokens", max_new_tokens), ("temperature", temperature), ("top_p", top_p),
                        ("variations", variations)):
        if value is not None:
            set_number(page, f"{tab}_{name}", value)
    if temperature == 0:
        page.wait_for_selector(f"#{tab}_num_beams input[type=number]:not([disabled])")
        set_number(page, f"{tab}_num_beams", beams)
    page.fill(f"#{tab}_seed input", str(seed))
    page.press(f"#{tab}_seed input", "Enter")


def shot(page, folder: Path, name: str) -> Path:
    """A full-page screenshot ``folder/name.png`` (also copied to $SPACE_SCREENS_DIR when set)."""
    import os
    import shutil

    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("SPACE_SCREENS_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def close_toasts(page) -> None:
    """Close every toast still open (the page is shared with later tests); some close
    themselves meanwhile, so this clicks whatever is there at once."""
    page.eval_on_selector_all(".toast-close", "els => els.forEach(e => e.click())")
