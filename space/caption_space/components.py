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
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import gradio as gr

from .views import esc

#: the route Gradio serves files under; an example's URL on this Space names its file there
FILE_ROUTE = "/gradio_api/file="


def own_file(url: str, allowed: set[Path], folders: list[Path] = ()) -> Path | None:
    """The local file an http(s) URL of this Space's file route names, when it is one of
    ``allowed`` (the examples) or lies in one of ``folders`` (Gradio's upload folder, where
    an MCP client's upload_file_to_gradio puts files); None for any other URL. Only the
    path is looked at, so the host the caller used (localhost, the Space's domain) does
    not matter, and nothing is fetched."""
    path = unquote(urlsplit(url).path)
    if FILE_ROUTE not in path:
        return None
    try:
        local = Path(path.split(FILE_ROUTE, 1)[1]).resolve()
    except (OSError, ValueError):
        return None
    if local in allowed or (local.is_file() and any(local.is_relative_to(f) for f in folders)):
        return local
    return None


def _local_or_refuse(block, path):
    """``path`` itself, the local path of a file of this Space named by its URL, or a
    one-line refusal."""
    from gradio.utils import get_upload_folder
    from gradio_client.utils import is_http_url_like

    if path is None or not is_http_url_like(str(path)):
        return path
    local = own_file(str(path), getattr(block, "own_examples", set()), [Path(get_upload_folder()).resolve()])
    if local is None:
        raise gr.Error("URLs are not fetched: upload the image file itself", print_exception=False)
    return str(local)


class _NoUrlFetch:
    """Gradio downloads an input given as an http(s) URL on the server (in
    Block.move_resource_to_block_cache and its async twin); this Space never fetches a URL
    a user sends, and Gradio has no switch for that, so such inputs are refused before any
    request is made. The exceptions are URLs of this Space's own files, an example (what
    the API page's sample call passes) or an upload: they are read from disk, not fetched."""

    def move_resource_to_block_cache(self, url_or_file_path):
        return super().move_resource_to_block_cache(_local_or_refuse(self, url_or_file_path))

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        return await super().async_move_resource_to_block_cache(_local_or_refuse(self, url_or_file_path))


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


def _example_url(self) -> str | None:
    """The URL of the first example on this Space, or None before the Space knows its
    address or when it has no examples."""
    root = self.example_root() if getattr(self, "example_root", None) else None
    examples = sorted(getattr(self, "own_examples", ()))
    if not root or not examples:
        return None
    return f"{root.rstrip('/')}{FILE_ROUTE}{examples[0]}"


def _example_payload(self):
    """Replaces gr.Image.example_payload (the API page's sample input, which is a picture on
    GitHub the Space would refuse): one of the Space's own examples, by its URL here."""
    from gradio_client.utils import handle_file

    url = _example_url(self)
    return handle_file(url) if url else None


def _example_value(self):
    """Replaces gr.Image.example_value, for the same reason as :func:`_example_payload`."""
    return _example_url(self)


#: image input (upload, paste, webcam) handing the handler the raw upload, never fetching URLs
ImageInput = _component_subclass("ImageInput", gr.Image, preprocess=_raw_image, example_payload=_example_payload,
                                 example_value=_example_value,
                                 doc="gr.Image whose handler gets (path or bytes, name), undecoded.")
#: file input that never fetches URLs
FilesInput = _component_subclass("FilesInput", gr.File, doc="gr.File that refuses URL inputs.")


def image_input(*, examples: list[Path] | tuple = (), root: Callable[[], str | None] | None = None,
                **kwargs) -> gr.Image:
    """An image input for the handlers (type filepath, no conversion by Gradio). ``examples``:
    the Space's example files, the only URLs it accepts (its own, under ``root()``, the
    address it is served at, which is known only once launched)."""
    comp = ImageInput(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"], **kwargs)
    comp.own_examples = {Path(p).resolve() for p in examples}
    comp.example_root = root
    return comp
