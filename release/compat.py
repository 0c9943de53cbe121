"""Checkpoints that both transformers majors read.

A folder saved by transformers 5 does not load in transformers 4.57 as it is:
its tokenizer_config names ``TokenizersBackend`` (a 5.x-only class) and lists
``extra_special_tokens`` where 4.x expects a dict; Llama-style text configs keep
the rotary base only inside ``rope_parameters`` (4.x reads ``rope_theta`` and
silently falls back to 10000, which changes every logit of SmolVLM, whose base
is 100000); image processor settings live only inside processor_config.json
and may name 5.x-only ``...Pil`` classes. :func:`make_portable` rewrites those
few fields in place, adding the 4.x spelling next to the 5.x one, so the same
files load under both (transformers 5 keeps reading its own keys first).

transformers has no "save for an older major" option; this module is the
hand-written part, and tests/test_release_compat.py loads the result under
4.57 and 5 and compares captions.
"""

from __future__ import annotations

from pathlib import Path

from captioning.errors import UserError
from captioning.files import read_json_file, write_json

#: 5.x tokenizer class names -> the 4.x class that reads the same tokenizer.json
_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def _read(path: Path) -> dict:
    doc = read_json_file(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path} is a JSON {type(doc).__name__}, not an object: the folder is damaged; save it again")
    return doc


def _fix_tokenizer_config(folder: Path) -> list[str]:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return []
    cfg = _read(path)
    changes = []
    cls = cfg.get("tokenizer_class")
    if cls in _TOKENIZER_CLASSES:
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{path}: tokenizer_class {cls} without tokenizer.json; cannot make it portable")
        cfg["tokenizer_class"] = _TOKENIZER_CLASSES[cls]
        changes.append(f"tokenizer_class {cls} -> {cfg['tokenizer_class']}")
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list):
        # 4.x treats extra_special_tokens as {name: token} and crashes on a list;
        # both majors read the list under additional_special_tokens.
        merged = list(dict.fromkeys([*cfg.get("additional_special_tokens", []), *extra]))
        cfg["additional_special_tokens"] = merged
        del cfg["extra_special_tokens"]
        changes.append("extra_special_tokens list -> additional_special_tokens")
    if changes:
        write_json(path, cfg)
    return changes


def _add_rope_theta(cfg: dict, where: str) -> list[str]:
    changes = []
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        changes.append(f"{where}rope_theta = {rope['rope_theta']}")
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in cfg:
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
            changes.append(f"{where}rope_scaling from rope_parameters")
    for key, value in cfg.items():
        if isinstance(value, dict) and key.endswith("_config"):
            changes += _add_rope_theta(value, f"{where}{key}.")
    return changes


def _fix_model_config(folder: Path) -> list[str]:
    path = folder / "config.json"
    if not path.is_file():
        return []
    cfg = _read(path)
    changes = _add_rope_theta(cfg, "")
    if "_pad_token_id" in cfg and "pad_token_id" not in cfg:
        # 5.x stores some composite configs' pad id privately; 4.x would use its class default
        cfg["pad_token_id"] = cfg["_pad_token_id"]
        changes.append("pad_token_id from _pad_token_id")
    if changes:
        write_json(path, cfg)
    return changes


def _portable_image_processor(ip: dict) -> tuple[dict, list[str]]:
    ip = dict(ip)
    changes = []
    name = ip.get("image_processor_type")
    if isinstance(name, str) and name.endswith("Pil"):
        # 5.x's PIL backends; 4.x knows the same processor without the suffix
        ip["image_processor_type"] = name[: -len("Pil")]
        changes.append(f"image_processor_type {name} -> {ip['image_processor_type']}")
    return ip, changes


def _fix_processor_config(folder: Path) -> list[str]:
    changes: list[str] = []
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        ip, ch = _portable_image_processor(_read(pre))
        if ch:
            write_json(pre, ip)
            changes += ch
    proc_path = folder / "processor_config.json"
    if not proc_path.is_file():
        return changes
    proc = _read(proc_path)
    nested = proc.get("image_processor")
    if not isinstance(nested, dict):
        return changes
    ip, ch = _portable_image_processor(nested)
    if ch:
        proc["image_processor"] = ip
        write_json(proc_path, proc)
        changes += ch
    if not pre.is_file():
        # 5.x nests the image processor inside processor_config.json; older readers
        # (4.x AutoImageProcessor among them) look for the flat preprocessor_config.json.
        flat = dict(ip)
        if "processor_class" in proc:
            flat["processor_class"] = proc["processor_class"]
        write_json(pre, flat)
        changes.append("preprocessor_config.json from processor_config.json")
    return changes


def make_portable(folder: str | Path) -> list[str]:
    """Rewrite a saved model folder in place so transformers 4.57 and 5 both load it.

    Idempotent. Returns one line per change made (empty when nothing was needed).
    """
    folder = Path(folder)
    return _fix_tokenizer_config(folder) + _fix_model_config(folder) + _fix_processor_config(folder)


def portability_problems(folder: str | Path) -> list[str]:
    """What would stop transformers 4.x reading ``folder`` (empty when portable).

    Checks the same fields :func:`make_portable` fixes, without writing.
    """
    folder = Path(folder)
    problems = []
    tok = folder / "tokenizer_config.json"
    if tok.is_file():
        cfg = _read(tok)
        if cfg.get("tokenizer_class") in _TOKENIZER_CLASSES:
            problems.append(f"tokenizer_config.json names {cfg['tokenizer_class']} (transformers 5 only)")
        if isinstance(cfg.get("extra_special_tokens"), list):
            problems.append("tokenizer_config.json lists extra_special_tokens (4.x expects a dict)")
    conf = folder / "config.json"
    if conf.is_file() and _add_rope_theta(_read(conf), ""):
        problems.append("config.json has rope_parameters without rope_theta (4.x would use 10000)")
    if (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").is_file():
        if isinstance(_read(folder / "processor_config.json").get("image_processor"), dict):
            problems.append("no preprocessor_config.json (image processor only nested in processor_config.json)")
    return problems
