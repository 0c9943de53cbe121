"""Published files never tell where they were made: absolute local paths in any string
become ``<local>/NAME`` (what the release stage and the Space apply to everything they show)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: an absolute path (or ~/...) of two or more components inside a string: not after a word
#: character, a URL's "://", a dot or "<" (so "</s>", "[/INST]", "a/b", "1/2" and URLs are
#: left alone)
_PART = r"[^\s/'\"`,;()\[\]{}<>|]+"
_LOCAL_PATH = re.compile(rf"(?<![\w:/.~<>-])(?:~/{_PART}|/{_PART}/{_PART})(?:/{_PART})*/?")
LOCAL = "<local>"


def scrub_paths(value: Any, replace: Mapping[str, str] | None = None) -> Any:
    """A copy of ``value`` (JSON-like) fit to publish: strings equal to a key of ``replace``
    become its value (a local base folder -> its Hub id), and every other absolute local
    path inside a string becomes ``<local>/NAME`` (its last component): a published file
    never tells where it was made."""
    replace = dict(replace or {})
    if isinstance(value, dict):
        return {k: scrub_paths(v, replace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_paths(v, replace) for v in value]
    if not isinstance(value, str):
        return value
    if value in replace:
        return replace[value]
    for old, new in replace.items():
        value = value.replace(old, new)
    return _LOCAL_PATH.sub(lambda m: f"{LOCAL}/{Path(m.group(0).rstrip('/')).name}", value)


def local_paths_in(text: str) -> list[str]:
    """The absolute local paths a text still holds (what :func:`scrub_paths` would replace)."""
    return _LOCAL_PATH.findall(text)
