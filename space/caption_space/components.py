"""The Gradio component overrides the Space needs, and only those.

Written against Gradio 6 (requirements pin gradio>=6,<7); each override names the Gradio
method it replaces, all of them public Block/Component methods, and tests/space checks
their effect (a URL input refused, an upload reaching the handler undecoded, no file
written next to the app). Recheck them when moving to another Gradio major.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABCMeta

import gradio as gr

from .views import esc


def user_error(e: Exception) -> gr.Error:
    """A UserError's message as the one-line error the UI shows (no traceback logged)."""
    return gr.Error(esc(str(e)), print_exception=False)


def _refuse_url(path) -> None:
    from gradio_client.utils import is_http_url_like

    if path is not None and is_http_url_like(str(path)):
        raise gr.Error("URLs are not fetched: upload the image file itself", print_exception=False)


class _NoUrlFetch:
    """Gradio downloads an input given as an http(s) URL on the server (in
    Block.move_resource_to_block_cache and its async twin); this Space never fetches a URL
    a user sends, and Gradio has no switch for that, so such inputs are refused before any
    request is made."""

    def move_resource_to_block_cache(self, url_or_file_path):
        _refuse_url(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        _refuse_url(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


def _raw_image(self, payload):
    """Replaces gr.Image.preprocess: the upload as (path or bytes, original name), undecoded.

    gr.Image would open (and for other modes decode) the file itself, so a corrupt
    file or a decompression bomb would fail inside Gradio with no useful message;
    here every byte goes through captioning.images.load_image instead.
    """
    if payload is None:
        return None
    name = payload.orig_name or "uploaded image"
    if payload.url and payload.url.startswith("data:"):
        try:
            return base64.b64decode(payload.url.split(",", 1)[1], validate=False), name
        except (IndexError, binascii.Error, ValueError):
            raise gr.Error(f"{esc(name)}: not valid image data", print_exception=False) from None
    if payload.path is None:
        return None
    return payload.path, name


def _component_subclass(name: str, base: type, **methods) -> type:
    """A subclass of a Gradio component that the stock front end renders.

    Built with ABCMeta.__new__ instead of the ``class`` statement: Gradio's ComponentMeta
    writes a .pyi stub next to the module of every component subclass (a file written
    into the Space folder on import), and for a subclass without its own __init__ or
    EVENTS that stub is all it would add. A subclass, rather than patched instances,
    because Gradio re-creates a component from its class whenever an event updates it.
    get_block_name/get_block_class return the base's name, so the front end draws the
    stock component.
    """
    block = base.__name__.lower()
    attrs = {"__module__": __name__, "__qualname__": name, "__doc__": methods.pop("doc", None),
             "get_block_name": lambda self: block, "get_block_class": lambda self: block, **methods}
    return ABCMeta.__new__(type(base), name, (_NoUrlFetch, base), attrs)


#: image input (upload, paste, webcam) handing the handler the raw upload, never fetching URLs
ImageInput = _component_subclass("ImageInput", gr.Image, preprocess=_raw_image,
                                 doc="gr.Image whose handler gets (path or bytes, name), undecoded.")
#: file input that never fetches URLs
FilesInput = _component_subclass("FilesInput", gr.File, doc="gr.File that refuses URL inputs.")


def image_input(**kwargs) -> gr.Image:
    """An image input for the handlers (type filepath, no conversion by Gradio)."""
    return ImageInput(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"], **kwargs)
