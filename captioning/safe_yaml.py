"""YAML read safely: recipes, train_config.yaml, card front matter and the Space's model lists
all go through :func:`parse_yaml` (no Python objects, no alias bombs, no duplicate keys, no
NaN), the YAML counterpart of captioning.files' JSON readers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.files import human_size, non_finite, read_text_file

#: YAML files this toolkit reads are recipes, configs and Space model lists: a few KiB and a
#: few hundred values. A "billion laughs" document is small but its aliases expand to
#: billions of values once anything walks it: the expanded size is bounded, not the aliases.
MAX_YAML_BYTES = 1 * 2**20
MAX_YAML_VALUES = 100_000


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as plain data, safely: PyYAML's SafeLoader (no Python objects), at most
    :data:`MAX_YAML_BYTES` and :data:`MAX_YAML_VALUES` values with aliases expanded, duplicate
    keys refused (YAML forbids them; PyYAML would silently keep the last), NaN and infinities
    refused. Each problem is a one-line UserError naming ``source`` (and the line)."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source} is {human_size(len(text))}: YAML files over {human_size(MAX_YAML_BYTES)} are "
                        "refused (a "
                        "recipe or config is a few KiB); check the file")
    loader = _yaml_loader(text, source)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise UserError(f"{source}: its aliases expand to over {MAX_YAML_VALUES:,} values (a \"billion laughs\" "
                            "document?); a recipe or config holds a few hundred: write the values out")
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or e.__class__.__name__
        raise UserError(f"{source} is not valid YAML: {str(problem)[:200]}{at}; fix it") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be data; check the file") from None
    finally:
        loader.dispose()
    bad = non_finite(doc)
    if bad is not None:
        raise UserError(f"{source}: {bad[0]} is {bad[1]}, not a finite number; give a number")
    return doc


def _expanded_size(node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias expanded (each node counted once
    per place it appears; memoised, so a bomb is measured without being expanded)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_VALUES + 1  # a node that contains itself expands without end
    total = 1
    value = node.value
    if isinstance(value, list):
        for item in value:
            for child in (item if isinstance(item, tuple) else (item,)):
                total += _expanded_size(child, memo)
                if total > MAX_YAML_VALUES:
                    break
    memo[id(node)] = total
    return total


def _yaml_loader_class():
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, text: str, source: str):
            super().__init__(text)
            self.source = source

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key != "<<" and key in seen:
                    raise UserError(f"{self.source}: key {str(key)[:100]!r} appears twice in one mapping (line "
                                    f"{key_node.start_mark.line + 1}); keep one")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def _yaml_loader(text: str, source: str):
    """A loader of ``text`` (the class is built on first use: yaml is imported lazily)."""
    global _LOADER_CLASS
    if _LOADER_CLASS is None:
        _LOADER_CLASS = _yaml_loader_class()
    return _LOADER_CLASS(text, source)


_LOADER_CLASS = None


def read_yaml_file(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse a YAML file (:func:`read_text_file`, then :func:`parse_yaml`)."""
    path = Path(path)
    return parse_yaml(read_text_file(path, what, max_bytes=MAX_YAML_BYTES), f"{what} {path}" if what else str(path))
