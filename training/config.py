"""Training configuration: typed dataclasses filled by defaults < YAML recipe < flags.

    from training.flags import load_config
    cfg = load_config(["--config", "training/recipes/shapes-tiny.yaml", "--optim.learning_rate", "1e-3"])

Sections: ``model``, ``lora``, ``quantization``, ``data``, ``optim``, ``eval``, ``output``.
jsonargparse does the parsing (training.flags, as in litgpt; this module does not import it):
a flag is ``--section.key value``, a recipe is ``--config FILE``, each key's help is the
docstring under its field.
Switches: ``--lora.use_dora``, ``--lora.use_dora false`` or ``--no-lora.use_dora``; ``null``
sets an optional value to None; lists are ``[a, b]`` (or ``--key+ item`` to append).
Unknown keys, bad values and impossible combinations raise :class:`UserError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from captioning.errors import UserError
from captioning.images import MAX_PIXELS
from captioning.options import MAX_PROMPT_CHARS
from captioning.vocabulary import CAPTION_TRANSFORM_NAMES, DEFAULT_MAX_NEW_TOKENS, DTYPE_CHOICES, VALIDATION_METRICS


def _typed(section: str):
    """Class decorator (under ``@dataclass``): before a section's own checks, every value is
    of its field's kind: null only where the field allows it, numbers finite, seeds within
    what torch takes. A recipe's ``key: null`` or ``.nan`` is then one line naming the key,
    not a TypeError inside a comparison."""

    def wrap(cls):
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self):
            hints = typing.get_type_hints(type(self))
            for f in dataclasses.fields(self):
                value, hint = getattr(self, f.name), hints.get(f.name)
                nullable = hint is Any or type(None) in typing.get_args(hint)
                if value is None and not nullable:
                    raise UserError(f"{section}.{f.name} cannot be null: give a value, or leave the key out for its "
                                    "default")
                if isinstance(value, float) and not math.isfinite(value):
                    raise UserError(f"{section}.{f.name} must be a finite number (got {value})")
                if f.name == "seed" and isinstance(value, int) and not 0 <= value < 2**32:
                    raise UserError(f"{section}.seed must be from 0 to 2**32 - 1 (got {value})")
            if own is not None:
                own(self)

        cls.__post_init__ = __post_init__
        return cls

    return wrap


# The caption transforms, precisions and validation metrics are named in captioning.vocabulary
# (no imports: validation needs no torch); the transforms themselves are in captioning.data.examples.
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
REFERENCE_MODES = ("sample", "all")
#: metrics the validation can compute (pycocoevalcap names) plus the loss-based ones
BEST_METRICS = VALIDATION_METRICS + ("loss", "perplexity")


@dataclass
@_typed("model.factory")
class FactoryConfig:
    """A freshly built random model from captioning.factory (no download, no folder)."""

    family: str = "idefics3"
    """factory family: idefics3, blip or bridge"""
    size: str = "tiny"
    """tiny (tests), demo (the offline demo: full 64 px shapes) or real (published architecture sizes)"""
    seed: int = 0
    """seed of the random weights"""

    def __post_init__(self):
        from synthetic.factory import BUILDERS, SIZES

        if self.family not in BUILDERS:
            raise UserError(f"model.factory.family {self.family!r}: choose one of {', '.join(sorted(BUILDERS))}")
        if self.size not in SIZES:
            raise UserError(f"model.factory.size {self.size!r}: choose one of {', '.join(SIZES)}")


@dataclass
@_typed("model")
class ModelConfig:
    """The base model and what of it trains."""

    name_or_path: str | None = None
    """base model: hub id or local folder (or use model.factory)"""
    factory: FactoryConfig | None = None
    """start from a random model built in memory: {family, size, seed}; full fine-tuning only"""
    family: str = "auto"
    """model family (auto: from the model's config)"""
    revision: str | None = None
    """hub revision (branch, tag or commit) of the base model"""
    trust_remote_code: bool = False
    """allow model code shipped with the checkpoint"""
    freeze_vision: bool = True
    """keep the vision tower frozen (switch off to train it)"""
    train_connector: bool = False
    """also train the vision-to-text connector (fully, not LoRA)"""
    freeze_language: bool = False
    """full fine-tuning: keep the language model frozen too (train only the connector and/or tower)"""


@dataclass
@_typed("lora")
class LoraSection:
    """LoRA / DoRA adapter (peft)."""

    enabled: bool = True
    """train a LoRA adapter (off: full fine-tuning)"""
    r: int = 16
    """LoRA rank"""
    alpha: float = 32.0
    """LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora)"""
    dropout: float = 0.05
    """dropout on the LoRA input"""
    target_modules: str | list[str] | None = None
    """modules to adapt: a regex over module paths or a list of names (null: every linear layer of the
    language model, whatever its names; the log and metrics.json say how many of them the targets reach)"""
    modules_to_save: list[str] | None = None
    """modules trained in full and saved with the adapter, e.g. [lm_head] when the new captions use tokens
    the base never produced"""
    use_rslora: bool = False
    """rank-stabilised LoRA scaling (alpha / sqrt(r))"""
    use_dora: bool = False
    """weight-decomposed LoRA (DoRA)"""
    bias: str = "none"
    """train biases: none, all or lora_only"""

    def __post_init__(self):
        if self.r < 1:
            raise UserError("lora.r must be at least 1")
        if not 0 <= self.dropout < 1:
            raise UserError("lora.dropout must be in [0, 1)")
        if self.bias not in ("none", "all", "lora_only"):
            raise UserError(f"lora.bias {self.bias!r}: choose none, all or lora_only")
        if self.target_modules == []:
            raise UserError("lora.target_modules must be a regex string, a non-empty list of names, or null")


@dataclass
@_typed("quantization")
class QuantizationConfig:
    """Load the base quantised through bitsandbytes (QLoRA)."""

    load_in_4bit: bool = False
    """QLoRA: load the base in 4 bits through bitsandbytes"""
    load_in_8bit: bool = False
    """load the base in 8 bits through bitsandbytes (LoRA on top)"""
    quant_type: str = "nf4"
    """4-bit data type: nf4 or fp4"""
    double_quant: bool = True
    """also quantise the quantisation constants (saves ~0.4 bit/param)"""

    def __post_init__(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise UserError(f"quantization.quant_type {self.quant_type!r}: choose nf4 or fp4")
        if self.load_in_4bit and self.load_in_8bit:
            raise UserError("quantization.load_in_4bit and quantization.load_in_8bit are both on: pick one")

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
@_typed("data")
class DataConfig:
    """The captions trained and validated on."""

    source: str | None = None
    """dataset: hub id, COCO captions json/folder, or image folder"""
    train_split: str = "train"
    """split to train on"""
    val_split: str = "validation"
    """split to validate on"""
    images_dir: str | None = None
    """image folder for COCO json sources"""
    prompt: str | None = None
    """instruction the caption answers (null: the family default)"""
    max_train_samples: int | None = None
    """use at most this many training images"""
    shuffle: bool = False
    """pick max_train_samples at random (seeded) instead of the first ones"""
    references: str = "sample"
    """sample: one random reference per image per epoch; all: each reference is its own example"""
    image_longest_edge: int | None = None
    """resize images so the longest edge is this (null: processor default)"""
    skip_bad_images: bool = False
    """decode every image once at the start and leave out the unreadable ones (listed in metrics.json);
    off: the first one stops the run, naming it"""
    max_pixels: int | None = MAX_PIXELS
    """refuse images over this many pixels (a decompression-bomb guard; null: Pillow's own limit)"""
    image_splitting: bool | None = None
    """SmolVLM: cut images into 512 px crops + a global view (~17x the vision compute of one crop); null:
    processor default"""
    caption_transform: str = "none"
    """rewrite target captions: none or linguistic_errors"""
    num_workers: int = 0
    """data loader worker processes"""
    feature_cache: bool = False
    """compute frozen vision + connector outputs once and reuse them every epoch (idefics3; needs
    model.freeze_vision and no model.train_connector)"""

    def __post_init__(self):
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UserError("data.max_pixels must be a positive number of pixels (or null)")
        if self.prompt is not None and len(self.prompt) > MAX_PROMPT_CHARS:
            # refused now, not at the first validation after the steps before it were trained
            raise UserError(f"data.prompt is {len(self.prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,}")
        if self.references not in REFERENCE_MODES:
            raise UserError(f"data.references {self.references!r}: choose sample or all")
        if self.caption_transform not in CAPTION_TRANSFORM_NAMES:
            raise UserError(f"data.caption_transform {self.caption_transform!r}: choose one of "
                            f"{', '.join(CAPTION_TRANSFORM_NAMES)}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise UserError("data.max_train_samples must be at least 1 (or null for all)")
        if self.image_longest_edge is not None and self.image_longest_edge < 8:
            raise UserError("data.image_longest_edge must be at least 8 pixels")
        if self.num_workers < 0:
            raise UserError("data.num_workers must be >= 0")


@dataclass
@_typed("optim")
class OptimConfig:
    """Optimisation. Every field but ``precision`` and ``num_threads`` is named as the
    TrainingArguments field it sets and is passed to it as is (:meth:`trainer_kwargs`), as
    TRL's SFTConfig does by subclassing; a section rather than a subclass, because a subclass
    would bring TrainingArguments' ~150 fields into every recipe, --help and train_config.yaml."""

    num_train_epochs: float = 1.0
    """passes over the training set"""
    max_steps: int = -1
    """stop after this many optimizer steps (-1: num_train_epochs decides)"""
    per_device_train_batch_size: int = 8
    """examples per process per step"""
    gradient_accumulation_steps: int = 1
    """gradient accumulation steps"""
    learning_rate: float = 1e-4
    """peak learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    optim: str = "adamw_torch"
    """transformers optimizer name (adamw_torch, adamw_8bit, ...)"""
    lr_scheduler_type: str = "cosine"
    """learning-rate schedule: cosine, linear, constant, constant_with_warmup, cosine_with_restarts or
    polynomial"""
    warmup_steps: int | float = 0
    """linear warmup: a number of steps, or a fraction of all steps below 1 (0.05)"""
    max_grad_norm: float = 1.0
    """clip gradients to this norm (0: off)"""
    label_smoothing_factor: float = 0.0
    """label smoothing of the caption loss"""
    seed: int = 0
    """seed for weights init (LoRA), data order, caption sampling and dropout"""
    activation_checkpointing: bool = False
    """recompute activations in backward (less memory, ~30% slower; non-reentrant)"""
    precision: str = "auto"
    """auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16 or fp16 (GPU only)"""
    num_threads: int | None = None
    """torch CPU threads (null: torch's default); tiny models run fastest on 1, especially on a busy
    machine"""

    #: ours, not TrainingArguments': resolved per device (precision) or set on torch (threads)
    OWN = ("precision", "num_threads")

    def __post_init__(self):
        if self.num_train_epochs <= 0:
            raise UserError("optim.num_train_epochs must be > 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError("optim.max_steps must be at least 1 (or -1: num_train_epochs decides)")
        if self.per_device_train_batch_size < 1:
            raise UserError("optim.per_device_train_batch_size must be at least 1")
        if self.gradient_accumulation_steps < 1:
            raise UserError("optim.gradient_accumulation_steps must be at least 1")
        if self.learning_rate <= 0:
            raise UserError("optim.learning_rate must be > 0")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise UserError(f"optim.lr_scheduler_type {self.lr_scheduler_type!r}: choose one of "
                            f"{', '.join(SCHEDULERS)}")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps)):
            raise UserError("optim.warmup_steps must be a whole number of steps, or a fraction of all steps in "
                            "[0, 1)")
        if self.max_grad_norm < 0:
            raise UserError("optim.max_grad_norm must be >= 0")
        if not 0 <= self.label_smoothing_factor < 1:
            raise UserError("optim.label_smoothing_factor must be in [0, 1)")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError("optim.num_threads must be at least 1 (or null)")
        if self.precision not in DTYPE_CHOICES:
            raise UserError(f"optim.precision {self.precision!r}: choose one of {', '.join(DTYPE_CHOICES)}")

    def trainer_kwargs(self) -> dict[str, Any]:
        """The TrainingArguments keyword arguments this section sets, under their own names."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.OWN}


@dataclass
@_typed("eval")
class EvalConfig:
    """Validation during training: val loss, and caption metrics on a fixed val subset."""

    enabled: bool = True
    """validate during training (loss + captioning metrics)"""
    every_steps: int | None = None
    """validate every N steps (null: at the end of each epoch)"""
    loss_samples: int | None = 100
    """val images for the loss (every reference counts; null: all)"""
    generate_samples: int = 50
    """fixed val images captioned from image + prompt for the metrics (0: loss only)"""
    metrics: list[str] = field(default_factory=lambda: ["CIDEr", "Bleu_4"])
    """caption metrics to compute (pycocoevalcap names)"""
    metric_for_best: str = "CIDEr"
    """pick the best checkpoint by this (CIDEr, Bleu_4, ..., loss, perplexity)"""
    early_stopping_patience: int = 0
    """stop after this many validations without improvement (0: off)"""
    load_best: bool = True
    """finish with the best checkpoint instead of the last"""
    on_start: bool = False
    """also validate the untrained model (a baseline in the history)"""
    batch_size: int = 8
    """batch size for validation loss and captioning"""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """caption length limit during validation"""
    num_beams: int = 1
    """beams during validation captioning"""

    def __post_init__(self):
        bad = [m for m in self.metrics if m not in VALIDATION_METRICS]
        if bad:
            raise UserError(f"eval.metrics: unknown {', '.join(map(str, bad))}; choose from "
                            f"{', '.join(VALIDATION_METRICS)}")
        if self.metric_for_best not in BEST_METRICS:
            raise UserError(f"eval.metric_for_best {self.metric_for_best!r}: choose one of {', '.join(BEST_METRICS)}")
        if self.metric_for_best in VALIDATION_METRICS:
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
@_typed("output")
class OutputConfig:
    """The output folder, checkpoints and logs."""

    dir: str | None = None
    """output folder (default: runs/<recipe name>); also --output-dir"""
    save_every_steps: int | None = None
    """checkpoint every N steps (null: at each validation, or each epoch without validation)"""
    save_total_limit: int | None = 2
    """keep at most this many checkpoints (the best is always kept)"""
    logging_steps: int = 10
    """log train loss / lr every N steps"""
    tensorboard: bool = True
    """write TensorBoard logs to OUTPUT_DIR/logs"""
    progress: bool = True
    """show progress bars"""
    overwrite: bool = False
    """start over in an output folder that holds an earlier run"""

    def __post_init__(self):
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise UserError("output.save_every_steps must be at least 1 (or null)")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise UserError("output.save_total_limit must be at least 1 (or null: keep all)")
        if self.logging_steps < 1:
            raise UserError("output.logging_steps must be at least 1")


@dataclass
class TrainConfig:
    """The whole training configuration."""

    name: str | None = None
    """run name (default: the recipe file's stem, else run)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        if self.name is not None and (not self.name.strip() or "/" in self.name or self.name in (".", "..")):
            raise UserError(f"name {self.name!r}: a run name is one folder name (runs/NAME), not empty or a path")
        self.name = self.name or "run"
        self.validate()

    def validate(self) -> None:
        """Checks across sections (each section checks itself)."""
        m, q = self.model, self.quantization
        if m.revision is not None and not m.revision.strip():
            raise UserError("model.revision is empty: give a branch, tag or commit, or leave it out")
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
