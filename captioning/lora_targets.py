"""The layers a LoRA adapter wraps by default, and what an adapter's targets cover.

The default is every linear layer of the language model, found by type in the loaded model,
whatever the architecture calls it: Llama's ``q_proj`` ... ``down_proj``, LFM2's ``out_proj``,
``w1``/``w2``/``w3`` and short-convolution projections, GLM-4's fused ``gate_up_proj``. A list
of layer names would cover some architectures only in part, silently. The language model is
what is neither the vision tower nor the connector (the family's ``vision_pattern`` and
``connector_pattern``) nor the output head (the module holding the output embeddings).

Coverage (:func:`coverage`) says how many of those layers an adapter's targets reach and which
they leave out; training logs it and records it in metrics.json (``lora_coverage``), and the
model card shows it (:func:`coverage_text`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from captioning.errors import UserError

#: at most this many left-out names are spelt out in a log line or a card row
SHOWN = 8
#: a recorded coverage's names: module paths, ``*`` for a layer index (far shorter than this)
_NAME = re.compile(r"[A-Za-z0-9_.*-]{1,500}")


def linear_types() -> tuple[type, ...]:
    """The layer types that are linear maps: ``nn.Linear`` (bitsandbytes' 4-/8-bit layers, which
    QLoRA wraps, subclass it) and transformers' ``Conv1D`` (GPT-2's)."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        return (torch.nn.Linear,)
    return (torch.nn.Linear, Conv1D)


def head_names(model) -> list[str]:
    """The output head(s): for each module whose ``get_output_embeddings()`` is a module of
    ``model``, the child of the innermost such owner that holds it (``lm_head``; BLIP's
    ``text_decoder.cls``, whose prediction-head transform sits beside the decoder)."""
    import torch

    names = {}
    for name, mod in model.named_modules():
        names.setdefault(id(mod), name)
    owner_of: dict[str, str] = {}  # output embeddings -> their innermost owner
    for owner, mod in model.named_modules():
        get = getattr(mod, "get_output_embeddings", None)
        if not callable(get):
            continue
        try:
            out = get()
        except (NotImplementedError, AttributeError, TypeError, ValueError):
            continue
        emb = names.get(id(out)) if isinstance(out, torch.nn.Module) else None
        if emb and (not owner or emb.startswith(owner + ".")):
            if emb not in owner_of or len(owner) > len(owner_of[emb]):
                owner_of[emb] = owner
    heads = []
    for emb, owner in owner_of.items():
        rest = emb[len(owner) + 1:] if owner else emb
        heads.append(f"{owner}.{rest.split('.')[0]}" if owner else rest.split(".")[0])
    return heads


def language_linear_names(model, vision_pattern: str, connector_pattern: str | None) -> list[str]:
    """Full module paths of every linear layer of the language model, in module order."""
    vision = re.compile(vision_pattern)
    connector = re.compile(connector_pattern) if connector_pattern else None
    heads = head_names(model)
    kinds = linear_types()
    out = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, kinds) or vision.search(name):
            continue
        if connector is not None and connector.search(name):
            continue
        if any(name == h or name.startswith(h + ".") for h in heads):
            continue
        out.append(name)
    return out


def _either(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _factored(suffixes: list[list[str]]) -> str:
    """A regex for module path endings (lists of path parts), the first part said once:
    ``self_attn\\.(?:q_proj|k_proj)`` for ``self_attn.q_proj`` and ``self_attn.k_proj``."""
    tails: dict[str, list[str]] = {}
    for parts in suffixes:
        tails.setdefault(parts[0], []).append(r"\.".join(re.escape(p) for p in parts[1:]))
    out = []
    for head, ends in tails.items():
        out += [re.escape(head)] if "" in ends else []
        ends = [e for e in ends if e]
        if ends:
            out.append(re.escape(head) + r"\." + _either(ends))
    return _either(out)


def exact_regex(names: list[str], module_names: Iterable[str]) -> str | None:
    """A regex (for ``re.fullmatch``, as peft applies it) matching exactly ``names`` among
    ``module_names``: layer indices written as ``\\d+``, one group per layer path, e.g.
    ``model\\.text_model\\.layers\\.\\d+\\.(?:self_attn\\.(?:q_proj|...)|mlp\\.(?:...))``. None when no
    such regex matches exactly these names (a list of the names serves then)."""
    if not names:
        return None
    groups: dict[str, list[list[str]]] = {}
    for name in names:
        parts = name.split(".")
        # up to the last index that is not the layer's own name (a Sequential's "0")
        cut = max((i + 1 for i, p in enumerate(parts[:-1]) if p.isdigit()), default=0)
        prefix = r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in parts[:cut])
        suffixes = groups.setdefault(prefix, [])
        if parts[cut:] not in suffixes:
            suffixes.append(parts[cut:])
    regex = _either([(prefix + r"\." if prefix else "") + _factored(sufs) for prefix, sufs in groups.items()])
    rx = re.compile(regex)
    return regex if {n for n in module_names if rx.fullmatch(n)} == set(names) else None


def collapse(names: Iterable[str], universe: Iterable[str]) -> list[str]:
    """``names`` for a reader: where they hold a layer path at every index there is (every
    ``layers.N.mlp.down_proj`` of ``universe``), that path once with ``*`` for the index."""
    def shape(name: str) -> str:
        return ".".join("*" if p.isdigit() else p for p in name.split("."))

    chosen = list(dict.fromkeys(names))
    members: dict[str, list[str]] = {}
    for name in dict.fromkeys([*universe, *chosen]):
        members.setdefault(shape(name), []).append(name)
    picked = set(chosen)
    out: list[str] = []
    for name in chosen:
        s = shape(name)
        every = members[s]
        if len(every) > 1 and all(m in picked for m in every):
            if s not in out:
                out.append(s)
        else:
            out.append(name)
    return out


def coverage(language: list[str], targeted: Iterable[str], module_names: Iterable[str], *,
             source: str) -> dict[str, Any]:
    """What an adapter's targets cover: ``targeted`` of ``language_linear`` language-model
    linear layers, the ones ``left_out`` and the modules wrapped ``outside`` the language
    model (names collapsed over layer indices), and who chose the targets (``source``:
    ``derived``, ``family`` or ``lora.target_modules``)."""
    hit = set(targeted)
    lang = set(language)
    universe = list(module_names)
    left = [n for n in language if n not in hit]
    outside = [n for n in universe if n in hit and n not in lang]
    return {"targeted": len(language) - len(left), "language_linear": len(language),
            "left_out": collapse(left, language), "outside": collapse(outside, universe), "source": source}


def _listed(names: list[str], code: bool) -> str:
    shown = ", ".join(f"`{n}`" if code else n for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def coverage_text(cov: dict[str, Any], family: str | None = None, *, code: bool = False) -> str:
    """``LoRA on 12 of 12 language-model linear layers``, or ``... 9 of 12 (lora.target_modules
    leaves out: ...)``, and the modules wrapped outside the language model if any (``code``:
    names in backticks, for Markdown)."""
    text = f"LoRA on {cov['targeted']} of {cov['language_linear']} language-model linear layers"
    if cov["left_out"]:
        who = "the {} family's targets leave".format(family or "") if cov.get("source") == "family" else (
            "lora.target_modules leaves")
        text += f" ({who} out: {_listed(cov['left_out'], code)})"
    if cov.get("outside"):
        text += f"; also on {_listed(cov['outside'], code)}, outside the language model"
    return text


def checked_coverage(value: Any, where: str) -> dict[str, Any] | None:
    """A recorded ``lora_coverage`` as :func:`coverage_text` reads it; None when not recorded,
    a UserError naming ``where`` when it is damaged."""
    if value is None:
        return None

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def names(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(n, str) and _NAME.fullmatch(n) for n in v)

    ok = (isinstance(value, dict) and count(value.get("targeted")) and count(value.get("language_linear"))
          and value["targeted"] <= value["language_linear"] and names(value.get("left_out"))
          and names(value.get("outside", [])) and isinstance(value.get("source", ""), str))
    if not ok:
        raise UserError(f"{where}: lora_coverage is not a coverage record (targeted, language_linear, left_out); "
                        "write it again with the command that made it")
    return value
