"""Training configuration: typed dataclasses filled by defaults < YAML recipe < flags.

    cfg = load_config(["--config", "training/recipes/shapes-tiny.yaml", "--optim.lr", "1e-3"])

Sections: ``model``, ``lora``, ``quantization``, ``data``, ``optim``, ``eval``, ``output``.
A flag is ``--section.key value`` (``--optim.lr 1e-4``) or, when the key name exists in
only one section, ``--key value`` (``--lr 1e-4``); dashes and underscores are the same.
Booleans: ``--lora.use_dora`` (true), ``--lora.use_dora false`` or ``--no-lora.use_dora``.
``null`` sets an optional value to None. Unknown keys, bad values and impossible
combinations raise :class:`UserError` naming the key.

Written by hand because transformers' HfArgumentParser flattens a single dataclass level
(no ``--section.key`` groups, no YAML layering, no nested dataclasses).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from captioning.errors import UserError
from captioning.images import MAX_PIXELS

# Named caption transforms live in training.data; listed here so validation needs no torch import.
CAPTION_TRANSFORMS = ("none", "linguistic_errors")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
REFERENCE_MODES = ("sample", "all")
#: metrics the validation can compute (pycocoevalcap names) plus the loss-based ones
GENERATION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
BEST_METRICS = GENERATION_METRICS + ("loss", "perplexity")


def _help(text: str, **kw) -> Any:
    """A dataclass field whose help text is written once and shown by --help."""
    return field(metadata={"help": text}, **kw)


@dataclass
class FactoryConfig:
    """A freshly built random model from captioning.factory (no download, no folder)."""

    family: str = _help("factory family: idefics3 or blip", default="idefics3")
    size: str = _help("tiny (tests, demo) or real (published architecture sizes)", default="tiny")
    seed: int = _help("seed of the random weights", default=0)

    def __post_init__(self):
        from captioning.factory import BUILDERS, SIZES

        if self.family not in BUILDERS:
            raise UserError(f"model.factory.family {self.family!r}: choose one of {', '.join(sorted(BUILDERS))}")
        if self.size not in SIZES:
            raise UserError(f"model.factory.size {self.size!r}: choose one of {', '.join(SIZES)}")


@dataclass
class ModelConfig:
    name_or_path: str | None = _help("base model: hub id or local folder (or use model.factory)", default=None)
    factory: FactoryConfig | None = _help(
        "start from a random model built in memory: {family, size, seed}; full fine-tuning only", default=None)
    family: str = _help("model family (auto: from the model's config)", default="auto")
    revision: str | None = _help("hub revision (branch, tag or commit) of the base model", default=None)
    trust_remote_code: bool = _help("allow model code shipped with the checkpoint", default=False)
    freeze_vision: bool = _help("keep the vision tower frozen (switch off to train it)", default=True)
    train_connector: bool = _help("also train the vision-to-text connector (fully, not LoRA)", default=False)
    freeze_language: bool = _help(
        "full fine-tuning: keep the language model frozen too (train only the connector and/or tower)",
        default=False)


@dataclass
class LoraSection:
    enabled: bool = _help("train a LoRA adapter (off: full fine-tuning)", default=True)
    r: int = _help("LoRA rank", default=16)
    alpha: float = _help("LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora)", default=32.0)
    dropout: float = _help("dropout on the LoRA input", default=0.05)
    target_modules: Any = _help(
        "modules to adapt: a regex over module paths or a list of names (null: the family's "
        "language-model attention + MLP projections)", default=None)
    modules_to_save: list | None = _help(
        "modules trained in full and saved with the adapter, e.g. [lm_head] when the new captions use "
        "tokens the base never produced", default=None)
    use_rslora: bool = _help("rank-stabilised LoRA scaling (alpha / sqrt(r))", default=False)
    use_dora: bool = _help("weight-decomposed LoRA (DoRA)", default=False)
    bias: str = _help("train biases: none, all or lora_only", default="none")

    def __post_init__(self):
        if self.r < 1:
            raise UserError("lora.r must be at least 1")
        if not 0 <= self.dropout < 1:
            raise UserError("lora.dropout must be in [0, 1)")
        if self.bias not in ("none", "all", "lora_only"):
            raise UserError(f"lora.bias {self.bias!r}: choose none, all or lora_only")
        t = self.target_modules
        if t is not None and not isinstance(t, str) and not (isinstance(t, list) and t and all(
                isinstance(x, str) for x in t)):
            raise UserError("lora.target_modules must be a regex string, a non-empty list of names, or null")


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = _help("QLoRA: load the base in 4 bits through bitsandbytes", default=False)
    load_in_8bit: bool = _help("load the base in 8 bits through bitsandbytes (LoRA on top)", default=False)
    quant_type: str = _help("4-bit data type: nf4 or fp4", default="nf4")
    double_quant: bool = _help("also quantise the quantisation constants (saves ~0.4 bit/param)", default=True)

    def __post_init__(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise UserError(f"quantization.quant_type {self.quant_type!r}: choose nf4 or fp4")
        if self.load_in_4bit and self.load_in_8bit:
            raise UserError("quantization.load_in_4bit and quantization.load_in_8bit are both on: pick one")

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
class DataConfig:
    source: str | None = _help("dataset: hub id, COCO captions json/folder, or image folder", default=None)
    train_split: str = _help("split to train on", default="train")
    val_split: str = _help("split to validate on", default="validation")
    images_dir: str | None = _help("image folder for COCO json sources", default=None)
    prompt: str | None = _help("instruction the caption answers (null: the family default)", default=None)
    max_train_samples: int | None = _help("use at most this many training images", default=None)
    shuffle: bool = _help("pick max_train_samples at random (seeded) instead of the first ones", default=False)
    references: str = _help("sample: one random reference per image per epoch; all: each reference is "
                            "its own example", default="sample")
    image_longest_edge: int | None = _help("resize images so the longest edge is this (null: processor default)",
                                           default=None)
    skip_bad_images: bool = _help("decode every image once at the start and leave out the unreadable ones "
                                  "(listed in metrics.json); off: the first one stops the run, naming it",
                                  default=False)
    max_pixels: int | None = _help("refuse images over this many pixels (a decompression-bomb guard; null: "
                                   "Pillow's own limit)", default=MAX_PIXELS)
    image_splitting: bool | None = _help(
        "SmolVLM: cut images into 512 px crops + a global view (~17x the vision compute of one crop); "
        "null: processor default", default=None)
    caption_transform: str = _help(f"rewrite target captions: {', '.join(CAPTION_TRANSFORMS)}", default="none")
    num_workers: int = _help("data loader worker processes", default=0)
    feature_cache: bool = _help(
        "compute frozen vision + connector outputs once and reuse them every epoch (idefics3; needs "
        "model.freeze_vision and no model.train_connector)", default=False)

    def __post_init__(self):
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UserError("data.max_pixels must be a positive number of pixels (or null)")
        if self.references not in REFERENCE_MODES:
            raise UserError(f"data.references {self.references!r}: choose sample or all")
        if self.caption_transform not in CAPTION_TRANSFORMS:
            raise UserError(f"data.caption_transform {self.caption_transform!r}: choose one of "
                            f"{', '.join(CAPTION_TRANSFORMS)}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise UserError("data.max_train_samples must be at least 1 (or null for all)")
        if self.image_longest_edge is not None and self.image_longest_edge < 8:
            raise UserError("data.image_longest_edge must be at least 8 pixels")
        if self.num_workers < 0:
            raise UserError("data.num_workers must be >= 0")


@dataclass
class OptimConfig:
    epochs: float = _help("passes over the training set", default=1.0)
    max_steps: int | None = _help("stop after this many optimizer steps (overrides epochs)", default=None)
    batch_size: int = _help("examples per device per step", default=8)
    grad_accum: int = _help("gradient accumulation steps", default=1)
    lr: float = _help("peak learning rate", default=1e-4)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    optimizer: str = _help("transformers optimizer name (adamw_torch, adamw_8bit, ...)", default="adamw_torch")
    scheduler: str = _help(f"learning-rate schedule: {', '.join(SCHEDULERS)}", default="cosine")
    warmup_steps: int = _help("linear warmup steps", default=0)
    warmup_ratio: float = _help("linear warmup as a fraction of all steps (instead of warmup_steps)", default=0.0)
    max_grad_norm: float = _help("clip gradients to this norm (0: off)", default=1.0)
    label_smoothing: float = _help("label smoothing of the caption loss", default=0.0)
    precision: str = _help("auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16 or fp16 (GPU only)", default="auto")
    gradient_checkpointing: bool = _help("recompute activations in backward (less memory, ~30% slower)",
                                         default=False)
    seed: int = _help("seed for weights init (LoRA), data order, caption sampling and dropout", default=0)
    num_threads: int | None = _help(
        "torch CPU threads (null: torch's default); tiny models run fastest on 1, especially on a busy machine",
        default=None)

    def __post_init__(self):
        if self.epochs <= 0:
            raise UserError("optim.epochs must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("optim.max_steps must be at least 1 (or null)")
        if self.batch_size < 1:
            raise UserError("optim.batch_size must be at least 1")
        if self.grad_accum < 1:
            raise UserError("optim.grad_accum must be at least 1")
        if self.lr <= 0:
            raise UserError("optim.lr must be > 0")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"optim.scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1:
            raise UserError("optim.warmup_steps must be >= 0 and optim.warmup_ratio in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise UserError("optim.warmup_steps and optim.warmup_ratio are both set: use one")
        if self.max_grad_norm < 0:
            raise UserError("optim.max_grad_norm must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise UserError("optim.label_smoothing must be in [0, 1)")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError("optim.num_threads must be at least 1 (or null)")
        if self.precision not in PRECISIONS:
            raise UserError(f"optim.precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")


@dataclass
class EvalConfig:
    enabled: bool = _help("validate during training (loss + captioning metrics)", default=True)
    every_steps: int | None = _help("validate every N steps (null: at the end of each epoch)", default=None)
    loss_samples: int | None = _help("val images for the loss (every reference counts; null: all)", default=100)
    generate_samples: int = _help("fixed val images captioned from image + prompt for the metrics "
                                  "(0: loss only)", default=50)
    metrics: list = _help("caption metrics to compute (pycocoevalcap names)",
                          default_factory=lambda: ["CIDEr", "Bleu_4"])
    metric_for_best: str = _help("pick the best checkpoint by this (CIDEr, Bleu_4, ..., loss, perplexity)",
                                 default="CIDEr")
    early_stopping_patience: int = _help("stop after this many validations without improvement (0: off)",
                                         default=0)
    load_best: bool = _help("finish with the best checkpoint instead of the last", default=True)
    on_start: bool = _help("also validate the untrained model (a baseline in the history)", default=False)
    batch_size: int = _help("batch size for validation loss and captioning", default=8)
    max_new_tokens: int = _help("caption length limit during validation", default=30)
    num_beams: int = _help("beams during validation captioning", default=1)

    def __post_init__(self):
        bad = [m for m in self.metrics if m not in GENERATION_METRICS]
        if bad:
            raise UserError(f"eval.metrics: unknown {', '.join(map(str, bad))}; choose from "
                            f"{', '.join(GENERATION_METRICS)}")
        if self.metric_for_best not in BEST_METRICS:
            raise UserError(f"eval.metric_for_best {self.metric_for_best!r}: choose one of {', '.join(BEST_METRICS)}")
        if self.metric_for_best in GENERATION_METRICS:
            if not self.generate_samples:
                raise UserError(f"eval.metric_for_best {self.metric_for_best} needs eval.generate_samples > 0 "
                                "(or pick loss)")
            if self.metric_for_best not in self.metrics:
                raise UserError(f"eval.metric_for_best {self.metric_for_best} is not in eval.metrics")
        if self.every_steps is not None and self.every_steps < 1:
            raise UserError("eval.every_steps must be at least 1 (or null: each epoch)")
        if self.loss_samples is not None and self.loss_samples < 1:
            raise UserError("eval.loss_samples must be at least 1 (or null: all)")
        if self.generate_samples < 0 or self.early_stopping_patience < 0:
            raise UserError("eval.generate_samples and eval.early_stopping_patience must be >= 0")
        if self.generate_samples == 1 and "CIDEr" in self.metrics:
            raise UserError("eval.generate_samples 1: CIDEr takes its idf from the evaluated set and scores one "
                            "image 0; use at least 2")
        if self.early_stopping_patience and not self.enabled:
            raise UserError("eval.early_stopping_patience needs eval.enabled")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.num_beams < 1:
            raise UserError("eval.batch_size, eval.max_new_tokens and eval.num_beams must be at least 1")

    @property
    def greater_is_better(self) -> bool:
        return self.metric_for_best not in ("loss", "perplexity")


@dataclass
class OutputConfig:
    dir: str | None = _help("output folder (default: runs/<recipe name>)", default=None)
    save_every_steps: int | None = _help(
        "checkpoint every N steps (null: at each validation, or each epoch without validation)", default=None)
    save_total_limit: int | None = _help("keep at most this many checkpoints (the best is always kept)",
                                         default=2)
    logging_steps: int = _help("log train loss / lr every N steps", default=10)
    tensorboard: bool = _help("write TensorBoard logs to OUTPUT_DIR/logs", default=True)
    progress: bool = _help("show progress bars", default=True)
    overwrite: bool = _help("start over in an output folder that holds an earlier run", default=False)

    def __post_init__(self):
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise UserError("output.save_every_steps must be at least 1 (or null)")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise UserError("output.save_total_limit must be at least 1 (or null: keep all)")
        if self.logging_steps < 1:
            raise UserError("output.logging_steps must be at least 1")


@dataclass
class TrainConfig:
    """The whole training configuration; ``name`` is the recipe's."""

    name: str = _help("run name (default: the recipe file's stem)", default="run")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks across sections (each section checks itself)."""
        m, q = self.model, self.quantization
        if bool(m.name_or_path) == (m.factory is not None):
            raise UserError("model.name_or_path and model.factory: set exactly one (a hub id / folder, or "
                            "{family, size, seed} for a random model)")
        if q.enabled and not self.lora.enabled:
            which = "load_in_4bit" if q.load_in_4bit else "load_in_8bit"
            raise UserError(f"quantization.{which} needs lora.enabled: quantised weights cannot be fine-tuned "
                            "directly (full fine-tuning needs quantization off)")
        if m.factory is not None and self.lora.enabled:
            raise UserError("model.factory builds an unsaved random base, which an adapter could not point to: "
                            "set lora.enabled false (full fine-tuning) or save the model first with "
                            "`python -m captioning.factory --out DIR` and pass model.name_or_path DIR")
        if m.freeze_language and self.lora.enabled:
            raise UserError("model.freeze_language with lora.enabled: the adapter lives in the language model; "
                            "switch one off")
        if m.freeze_language and m.freeze_vision and not m.train_connector and not self.lora.enabled:
            raise UserError("model.freeze_language, model.freeze_vision and no model.train_connector: nothing "
                            "would train")
        if not self.data.source:
            raise UserError("data.source is required (a hub id, COCO captions json/folder, or image folder)")
        if self.data.feature_cache and (not m.freeze_vision or m.train_connector):
            key = "model.freeze_vision false" if not m.freeze_vision else "model.train_connector"
            raise UserError(f"data.feature_cache needs a frozen vision tower and connector, but {key} trains "
                            "them: switch one off")
        e, o = self.eval, self.output
        if e.enabled and e.load_best and o.save_every_steps and (
                not e.every_steps or o.save_every_steps % e.every_steps):
            raise UserError("output.save_every_steps must be a multiple of eval.every_steps while eval.load_best is "
                            "on (the best checkpoint is saved when it is measured); or set it to null")
        if self.eval.early_stopping_patience and not self.eval.load_best:
            raise UserError("eval.early_stopping_patience needs eval.load_best (the Trainer keeps the best "
                            "checkpoint for it)")

    # --------------------------------------------------------------- export
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)


# =================================================================== parsing
SECTIONS = ("model", "lora", "quantization", "data", "optim", "eval", "output")
#: flags that are not config keys or whose flat name would be unclear
ALIASES = {"output_dir": "output.dir"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _leaf_paths(cls, prefix: str = "") -> dict[str, Any]:
    """dotted key -> field type, nested dataclasses flattened (``model.factory.size``)."""
    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_paths(tp, key + "."))
        else:
            out[key] = hints[f.name]
    return out


def all_keys() -> dict[str, Any]:
    """Every config key (dotted) and its type."""
    return _leaf_paths(TrainConfig)


def _coerce(key: str, value: Any, tp) -> Any:
    """Check/convert one value (from YAML or a flag string) to the field's type."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "~") and inner is not str):
        if optional or inner is Any:
            return None
        raise UserError(f"{key}: a value is required (null is not allowed here)")
    if isinstance(value, str) and value == "null" and optional:
        return None
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError
        if inner is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(float(value) if "e" in value.lower() else value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if inner is list or typing.get_origin(inner) is list:
            if isinstance(value, str):
                import yaml

                parsed = yaml.safe_load(value) if value.strip().startswith("[") else [
                    v.strip() for v in value.split(",") if v.strip()]
                value = parsed
            if not isinstance(value, list):
                raise ValueError
            return list(value)
        if inner is Any:
            if isinstance(value, str) and value.strip().startswith("["):
                import yaml

                return yaml.safe_load(value)
            return value
    except (TypeError, ValueError):
        names = {bool: "true or false", int: "an integer", float: "a number", str: "text", list: "a list"}
        want = names.get(inner, names[list] if typing.get_origin(inner) is list else str(inner))
        raise UserError(f"{key}: expected {want}, got {value!r}") from None
    return value


def _set(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _flatten_yaml(data: dict, prefix: str, leaves: dict[str, Any], origin: str) -> dict[str, Any]:
    """YAML mapping -> {dotted key: value}, rejecting unknown keys (named with their path)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if key in leaves:
            out[key] = v
        elif any(leaf.startswith(key + ".") for leaf in leaves):
            if v is None:
                out[key] = None  # an optional nested section switched off (factory: null)
            elif isinstance(v, dict):
                out.update(_flatten_yaml(v, key + ".", leaves, origin))
            else:
                raise UserError(f"{origin}: {key} must be a mapping of keys, got {v!r}")
        else:
            raise UserError(f"{origin}: unknown key {key}{_suggest(key, leaves)}")
    return out


#: transformers TrainingArguments names (what a user coming from the Trainer types) -> our keys
KNOWN_NAMES = {"learning_rate": "optim.lr", "num_train_epochs": "optim.epochs",
               "per_device_train_batch_size": "optim.batch_size", "train_batch_size": "optim.batch_size",
               "gradient_accumulation_steps": "optim.grad_accum", "lr_scheduler_type": "optim.scheduler",
               "lr_scheduler": "optim.scheduler", "optim": "optim.optimizer", "num_epochs": "optim.epochs",
               "epochs": "optim.epochs", "per_device_eval_batch_size": "eval.batch_size",
               "eval_steps": "eval.every_steps", "save_steps": "output.save_every_steps",
               "logging_steps": "output.logging_steps", "output_dir": "output.dir", "model_name_or_path":
               "model.name_or_path", "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout"}


def _suggest(key: str, leaves, flag: bool = False) -> str:
    """" (did you mean KEY?)" for an unknown key (``--KEY`` for a flag): a Trainer name we
    spell otherwise, else the closest key name within the same section, else the closest
    anywhere (by name, not path)."""
    import difflib

    dash = "--" if flag else ""
    section, _, name = key.rpartition(".")
    if name in KNOWN_NAMES and KNOWN_NAMES[name] in leaves:
        return f" (did you mean {dash}{KNOWN_NAMES[name]}?)"
    pools = [[k for k in leaves if k.rpartition(".")[0] == section], list(leaves)] if section else [list(leaves)]
    for pool in pools:
        by_name = {k.rpartition(".")[2]: k for k in pool}
        close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {dash}{by_name[close[0]]}?)"
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
    return f" (did you mean {dash}{close[0]}?)" if close else ""


def _flat_names(leaves: dict[str, Any]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for key in leaves:
        by_name.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    return by_name


def _resolve_flag(name: str, leaves: dict[str, Any]) -> str:
    name = name.replace("-", "_")
    if name in ALIASES:
        return ALIASES[name]
    if name in leaves or any(leaf.startswith(name + ".") for leaf in leaves):
        return name
    owners = _flat_names(leaves).get(name, [])
    if len(owners) == 1:
        return owners[0]
    if len(owners) > 1:
        raise UserError(f"--{name} is ambiguous: use one of {', '.join('--' + o for o in owners)}")
    raise UserError(f"unknown option --{name}{_suggest(name, leaves, flag=True)}; see --help for every key")


def _is_bool(tp) -> bool:
    return _unwrap_optional(tp)[0] is bool


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--optim.lr", "1e-4", "--no-lora.use_dora"]`` -> ``{"optim.lr": "1e-4", "lora.use_dora": False}``.

    Values stay strings here; they are type-checked when the config is built.
    """
    leaves = all_keys()
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            raise UserError(f"unexpected argument {tok!r}: options look like --section.key value")
        name, eq, inline = tok[2:].partition("=")
        negated = False
        if name.startswith("no-") or name.startswith("no_"):
            try:
                _resolve_flag(name, leaves)
            except UserError:
                negated, name = True, name[3:]
        key = _resolve_flag(name, leaves)
        tp = leaves.get(key, dict)
        if negated:
            if not _is_bool(tp):
                raise UserError(f"--no-{name}: {key} is not a switch (only booleans have --no- forms)")
            if eq:
                raise UserError(f"--no-{name} takes no value")
            out[key] = False
            i += 1
            continue
        if eq:
            out[key] = inline
            i += 1
        elif _is_bool(tp) and (i + 1 >= len(args) or args[i + 1].lower() not in _TRUE | _FALSE | {"null"}):
            out[key] = True  # a bare switch
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"--{name} needs a value")
            out[key] = args[i + 1]
            i += 2
    return out


def _build(cls, tree: dict, prefix: str = ""):
    """Construct dataclass ``cls`` from a nested dict, coercing each leaf to its type."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        key = f"{prefix}{f.name}"
        value = tree[f.name]
        tp, optional = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            if value is None:
                if not optional:
                    raise UserError(f"{key} cannot be null")
                kwargs[f.name] = None
            else:
                kwargs[f.name] = _build(tp, value, key + ".")
        else:
            kwargs[f.name] = _coerce(key, value, hints[f.name])
    return cls(**kwargs)


def build_config(recipe: dict | None = None, overrides: dict[str, Any] | None = None, *,
                 origin: str = "config") -> TrainConfig:
    """defaults < ``recipe`` (a nested dict, as from YAML) < ``overrides`` ({dotted key: value})."""
    leaves = all_keys()
    flat: dict[str, Any] = {}
    if recipe:
        if not isinstance(recipe, dict):
            raise UserError(f"{origin}: a recipe is a mapping of sections (model:, data:, ...)")
        flat.update(_flatten_yaml(recipe, "", leaves, origin))
    for key, value in (overrides or {}).items():
        if key in leaves:
            flat[key] = value
            continue
        if not any(leaf.startswith(key + ".") for leaf in leaves):
            raise UserError(f"unknown key {key}{_suggest(key, leaves)}")
        # a whole optional section from a flag: --model.factory null, or a YAML mapping
        if isinstance(value, str):
            import yaml

            value = yaml.safe_load(value)
        if value is None:
            flat = {k: v for k, v in flat.items() if not k.startswith(key + ".")}
            flat[key] = None
        elif isinstance(value, dict):
            flat.update(_flatten_yaml(value, key + ".", leaves, f"--{key}"))
        else:
            raise UserError(f"--{key}: expected null or a mapping like {{size: tiny}}, got {value!r}")
    # type-check every value here, where its source is known: a recipe's mistake names the file
    yaml_keys = set(_flatten_yaml(recipe, "", leaves, origin)) if recipe else set()
    for key, value in flat.items():
        if key in leaves and value is not None:
            try:
                _coerce(key, value, leaves[key])
            except UserError as e:
                if key in yaml_keys and key not in (overrides or {}):
                    raise UserError(f"{origin}: {e}") from None
                raise UserError(f"--{str(e)}") from None
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None and key not in leaves:  # a nested optional section set to null
            _set(tree, key, None)
            continue
        _set(tree, key, value)
    return _build(TrainConfig, tree)


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML file (a mapping); UserError naming the file otherwise."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file (recipes live in training/recipes/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: a recipe is a mapping of sections (model:, data:, ...)")
    data.setdefault("name", p.stem)
    return data


def load_config(argv: list[str] | None = None, *, config: str | Path | None = None) -> TrainConfig:
    """Build the config from ``--config FILE`` (or ``config``) plus ``--key value`` flags."""
    args = list(argv or [])
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UserError("--config needs a recipe file")
        config = args[i + 1]
        del args[i:i + 2]
    recipe = load_recipe(config) if config else None
    return build_config(recipe, parse_overrides(args), origin=str(config or "config"))


def help_text() -> str:
    """Every key with its type, default and help, for --help."""
    lines = []

    def walk(cls, prefix):
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = _unwrap_optional(hints[f.name])
            key = prefix + f.name
            if dataclasses.is_dataclass(tp):
                if f.metadata.get("help"):
                    lines.append(f"  --{key}.*  {f.metadata['help']}")
                walk(tp, key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            lines.append(f"  --{key} (default {default!r})  {f.metadata.get('help', '')}")

    walk(TrainConfig, "")
    return "\n".join(lines)


def changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every setting that differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs between two config dicts."""
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in changes(old, new)]
