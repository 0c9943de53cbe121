"""How a failure reaches a visitor, a gradio_client or HTTP caller and an MCP client: as the
same one line, through :func:`handled`, which every event handler goes through.

Gradio hands a ``gr.Error``'s text to the page, the API and MCP alike; any other exception
reaches them as ``{"error": null}``, or with ``show_error`` (which app.py sets for Gradio's
own refusals of a malformed request) as its raw text. So no exception leaves a handler as
itself:

- a ``gr.Error`` (a refusal a handler wrote, already escaped) passes as it is;
- a failure a user can fix, classified by kind in one place for every entry point
  (:func:`captioning.cli.user_message`: bad input, damaged weights/JSON/YAML/tokenizer
  files, the disk, memory, the network), becomes that line;
- anything else is a bug: the line says ``internal error (Class)`` and the traceback goes
  to the server log, never to the page.

A server path never reaches a visitor (:func:`captioning.portability.scrub_paths`, down to the
file's name): it says nothing they can act on, and where the server keeps its files is
nobody's business.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from captioning.cli import one_line, user_message
from captioning.portability import LOCAL, scrub_paths

from .views import esc

log = logging.getLogger("space")

#: set on every function :func:`handled` returns (tests check every event has one)
HANDLED = "_space_handled"


def public_message(exc: BaseException, doing: str = "a request") -> str:
    """The one line a visitor reads for ``exc`` (unescaped): :func:`captioning.cli.user_message`'s,
    or for a bug ``internal error (Class); ...`` with the traceback logged, saying what was ``doing``."""
    message = user_message(exc)
    if message is None:
        log.error("internal error in %s", doing, exc_info=exc)
        message = f"internal error ({exc.__class__.__name__}); the server log has the details"
    # a file's name is enough to tell which file: not <local>/NAME, whose brackets a gr.Error
    # (HTML on the page) would hand API clients as &lt;local&gt;
    return one_line(scrub_paths(message).replace(f"{LOCAL}/", ""))


def public_error(exc: BaseException, prefix: str = "", doing: str | None = None) -> gr.Error:
    """``exc`` as the gr.Error the page, the API and MCP show: a gr.Error as it is, anything
    else :func:`public_message` (after ``prefix``, e.g. the model's name), escaped. ``doing``
    names the work in the log (default: the prefix)."""
    if isinstance(exc, gr.Error):
        return exc
    message = public_message(exc, doing or prefix.rstrip(": ") or "a request")
    return gr.Error(esc(prefix + message), print_exception=False)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose failures all leave as :func:`public_error`; its name, docstring and
    signature (what the API page and MCP tools are built from) stay ``fn``'s."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise public_error(e, doing=fn.__name__) from None

    setattr(run, HANDLED, True)
    return run
