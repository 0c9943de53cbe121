"""What a model card is made of, read from a release (or training output) folder.

:func:`collect_inputs` gathers the model folder's config, train_config.yaml, the eval
record (metrics.json from ``eval/run.py generate``), merge_check.json, release.json and
the training logs into :class:`CardInputs`, plain data that release/card.py renders.
Everything here works offline: a missing input stays None and the card says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import UserError
from captioning.files import check_model_folder, read_json_file
from captioning.lora_targets import checked_coverage
from captioning.records import (
    KIND_MERGE_CHECK,
    KIND_RELEASE,
    MERGE_CHECK,
    RELEASE,
    EvalRecord,
    TrainConfigRecord,
    TrainingRecord,
    adapter_base,
    card_front_matter,
    model_config,
    read_record,
)

#: licences of well-known base models, used only when the base's own card cannot be read
KNOWN_LICENSES = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolVLM-500M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolVLM-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolVLM-256M-Base": "apache-2.0",
    "HuggingFaceTB/SmolVLM-500M-Base": "apache-2.0",
    "Salesforce/blip-image-captioning-base": "bsd-3-clause",
    "Salesforce/blip-image-captioning-large": "bsd-3-clause",
}
#: the licence of weights this toolkit's random-model factory made (the project's own)
FACTORY_LICENSE = "apache-2.0"


@dataclass
class CardInputs:
    """Everything a card is rendered from (plain data; :func:`collect_inputs` fills it)."""

    repo_id: str
    family: str | None = None
    is_adapter: bool = False
    base_model: str | None = None
    base_revision: str | None = None
    license: str | None = None
    license_source: str | None = None
    metrics: dict[str, Any] | None = None
    train_config: dict[str, Any] | None = None
    merge_check: dict[str, Any] | None = None
    #: {"train": [(step, loss)], "eval": [(step, loss)]}
    loss: dict[str, list[tuple[float, float]]] | None = None
    #: base, its base, ... (see base_lineage); ends with "captioning.factory" for random weights
    lineage: list[str] = field(default_factory=list)
    loss_source: str | None = None
    n_params: int | None = None
    dtype: str | None = None
    language: list[str] = field(default_factory=lambda: ["en"])
    #: the checkpoint ships its own model code (config.json auto_map): snippets need trust_remote_code
    remote_code: bool = False
    #: weights fingerprint of the base (captioning.records); the card names a local base by it
    base_fingerprint: str | None = None
    #: the base is a local folder with no Hub id: named "a local model" and its fingerprint
    base_local: bool = False
    #: the language-model linear layers the LoRA adapter reached (captioning.lora_targets.coverage),
    #: from the training record or release.json; None when not recorded
    lora_coverage: dict[str, Any] | None = None


def looks_like_hub_id(name: str | None) -> bool:
    """``org/name`` that is not a local path."""
    if not name or not isinstance(name, str):
        return False
    from captioning.loading import looks_local

    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not looks_local(name)


def read_loss_history(folder: str | Path) -> tuple[dict[str, list[tuple[float, float]]] | None, str | None]:
    """Training/eval loss per step from a training output folder.

    Reads TensorBoard event files under ``logs/`` (tags ``train/loss``, ``eval/loss``), else
    the newest ``trainer_state.json`` (its ``log_history``). Returns (None, None) when
    neither holds a loss.
    """
    folder = Path(folder)
    logs = folder / "logs"
    if logs.is_dir() and any(logs.rglob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

        mux = EventMultiplexer(size_guidance={"scalars": 0})
        mux.AddRunsFromDirectory(str(logs))
        mux.Reload()
        out: dict[str, list[tuple[float, float]]] = {"train": [], "eval": []}
        for run, tags in mux.Runs().items():
            for tag in tags.get("scalars", []):
                key = {"train/loss": "train", "loss": "train", "eval/loss": "eval", "eval_loss": "eval"}.get(tag)
                if key:
                    out[key] += [(float(e.step), float(e.value)) for e in mux.Scalars(run, tag)]
        if out["train"] or out["eval"]:
            return {k: sorted(v) for k, v in out.items()}, "logs/ (TensorBoard)"
    states = sorted(folder.glob("checkpoints/*/trainer_state.json"), key=lambda p: p.stat().st_mtime)
    states += [folder / "trainer_state.json"] if (folder / "trainer_state.json").is_file() else []
    if states:
        state = read_json_file(states[-1])
        hist = state.get("log_history", [])
        out = {"train": [(float(h["step"]), float(h["loss"])) for h in hist if "loss" in h and "step" in h],
               "eval": [(float(h["step"]), float(h["eval_loss"])) for h in hist if "eval_loss" in h and "step" in h]}
        if out["train"] or out["eval"]:
            return out, str(states[-1].relative_to(folder))
    return None, None


def _count_params(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files (from their headers only)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                total += math.prod(st.get_slice(k).get_shape())
    return total


# the lineage root of random weights; it keeps the factory's old module name (now synthetic.factory,
# still runnable as captioning.factory) because release manifests already record it
FACTORY = "captioning.factory"


def lora_coverage(folder: str | Path) -> dict[str, Any] | None:
    """The LoRA coverage the training record in ``folder`` (a training output's metrics.json)
    holds; None without one, or from a run that did not record it."""
    record = TrainingRecord.find(folder)
    return checked_coverage(record.doc.get("lora_coverage"), str(record.path)) if record else None


def base_lineage(base: str | None, train_config: dict | None, max_hops: int = 8) -> list[str]:
    """The chain of bases behind a model: its base, that folder's own base (read from its
    train_config.yaml), ... ending at a hub id, an unrecorded folder, or ``captioning.factory``
    (random weights). A fine-tune of a fine-tune (the demo's style LoRA) is traced to its root."""
    chain: list[str] = []
    cfg = train_config
    name = base
    for _ in range(max_hops):
        model_cfg = (cfg or {}).get("model") if isinstance((cfg or {}).get("model"), dict) else {}
        if not name and model_cfg.get("factory"):
            chain.append(FACTORY)
            break
        name = name or model_cfg.get("name_or_path")
        if not name or name in chain:
            break
        chain.append(str(name))
        record = TrainConfigRecord.find(name) if Path(name).is_dir() else None
        if record is None:
            break
        cfg = record.doc
        name = None
    return chain


def base_license(base: str | None, train_config: dict | None) -> tuple[str | None, str]:
    """(licence id, where it came from) of the base model; (None, reason) when unknown.

    Walks :func:`base_lineage`: a README front matter in a local base folder, then a table of
    well-known bases, then random factory weights (this toolkit's licence). Never asks the
    network: a card must render offline.
    """
    chain = base_lineage(base, train_config)
    if not chain:
        return None, "the base model is not recorded"
    for name in chain:
        readme = Path(name) / "README.md"
        if readme.is_file():
            lic = card_front_matter(readme).get("license")
            if lic:
                return str(lic), f"{readme} front matter"
        if name in KNOWN_LICENSES:
            return KNOWN_LICENSES[name], f"the published licence of {name}"
    if chain[-1] == FACTORY:
        return FACTORY_LICENSE, "random initial weights from synthetic.factory, this toolkit's licence"
    return None, f"not found for {chain[-1]}: check its model card and pass --license"


def collect_inputs(model_dir: str | Path, *, repo_id: str | None = None, metrics: str | Path | None = None,
                   train_config: str | Path | None = None, logs: str | Path | None = None,
                   license: str | None = None, language: list[str] | None = None) -> CardInputs:
    """Gather a card's inputs from a release (or training output) folder and optional files.

    ``metrics``/``train_config`` default to the files inside ``model_dir``; ``logs`` (a
    training output folder) defaults to ``model_dir`` itself.
    """
    from captioning.families import family_for_config, get_family

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such folder (pass a release or training output folder)")
    check_model_folder(model_dir)
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: no config.json or adapter_config.json; pass a model folder")
    tc_record = TrainConfigRecord.read(train_config) if train_config else TrainConfigRecord.find(model_dir)
    tc = tc_record.doc if tc_record else None
    if tc_record is not None:
        from training.recorded import recorded_problem  # the types training.config declares

        problem = recorded_problem(tc)
        if problem:
            raise UserError(f"{tc_record.path}: {problem}; the file is damaged: write it again with training/train.py")
    found = EvalRecord.find(model_dir)  # a release folder's; a training output's metrics.json is not one
    mt = EvalRecord.read(metrics, what="--metrics").doc if metrics else (found.doc if found else None)
    merge_check = read_record(model_dir, KIND_MERGE_CHECK) if (model_dir / MERGE_CHECK).is_file() else None

    model_cfg = (tc or {}).get("model") if isinstance((tc or {}).get("model"), dict) else {}
    base = revision = None
    if merge_check:
        base, revision = merge_check.get("base"), merge_check.get("base_revision")
    if is_adapter:
        base = base or adapter_base(model_dir)
    base = base or model_cfg.get("name_or_path")
    revision = revision or model_cfg.get("revision")

    family = model_cfg.get("family") if model_cfg.get("family") not in (None, "auto") else None
    dtype = None
    remote_code = False
    cfg = model_config(model_dir)
    if cfg:
        dtype = cfg.get("dtype") or cfg.get("torch_dtype")
        remote_code = bool(cfg.get("auto_map"))
        if family is None:
            from types import SimpleNamespace

            family = family_for_config(SimpleNamespace(model_type=cfg.get("model_type"))).name
    elif family is None and model_cfg.get("factory"):
        family = get_family(model_cfg["factory"].get("family", "idefics3")).name

    lic, lic_src = (license, "--license") if license else base_license(base, tc)
    loss, loss_src = read_loss_history(logs) if logs else read_loss_history(model_dir)
    coverage = lora_coverage(logs or model_dir)
    lineage = base_lineage(base, tc)
    base_fp = (merge_check or {}).get("base_fingerprint")
    base_local = False
    manifest = read_record(model_dir, KIND_RELEASE) if (model_dir / RELEASE).is_file() else None
    if manifest:  # a release folder pushed again: what it was made from is recorded, not on this machine
        mb = manifest.get("base") or {}
        base, base_fp, base_local = mb.get("id"), mb.get("fingerprint"), bool(mb.get("local"))
        lineage = manifest.get("lineage") or lineage
        if not license:
            lic, lic_src = manifest.get("license"), manifest.get("license_source") or lic_src
        if loss is None and manifest.get("loss"):
            loss = {k: [tuple(p) for p in v] for k, v in manifest["loss"].items()}
            loss_src = manifest.get("loss_source")
        if coverage is None:
            coverage = checked_coverage(manifest.get("lora_coverage"), str(model_dir / RELEASE))
    return CardInputs(repo_id=repo_id or str(model_dir), family=family, is_adapter=is_adapter, base_model=base,
                      base_revision=revision, license=lic, license_source=lic_src, metrics=mt, train_config=tc,
                      merge_check=merge_check, loss=loss, loss_source=loss_src, n_params=_count_params(model_dir),
                      dtype=dtype, language=language or ["en"], lineage=lineage,
                      remote_code=remote_code, base_fingerprint=base_fp, base_local=base_local,
                      lora_coverage=coverage)
