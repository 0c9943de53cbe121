"""The model side of training: load the base (plain, 4-/8-bit, or a fresh random one),
decide which parameters train (LoRA, full fine-tuning, frozen tower, connector), and
pick the compute precision for the device.

Loading goes through captioning.loading / synthetic.factory; quantised loading adds
the bitsandbytes config the inference loader does not need (8-bit, skip modules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captioning.errors import UserError
from training.config import TrainConfig


@dataclass
class LoadedBase:
    model: Any
    processor: Any
    family: Any
    #: what the adapter's base_model_name_or_path records: hub id or absolute folder
    base_ref: str | None
    #: the prompt this base was trained with (train_config.yaml beside it), else the family default
    prompt: str | None


# ---------------------------------------------------------------- precision
def resolve_precision(precision: str, device_type: str) -> str:
    """auto -> bf16 (or fp16) on CUDA, fp32 elsewhere. Half precision on CPU is refused:
    without native support its matmuls run many times slower than fp32."""
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision in ("bf16", "fp16") and device_type != "cuda":
        raise UserError(f"optim.precision {precision} needs a CUDA GPU (on CPU half precision is many times "
                        "slower than fp32): use auto or fp32")
    return precision


def training_device_type() -> str:
    """cuda, mps or cpu: what the Trainer will train on."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ---------------------------------------------------------------- loading
def _base_ref(name: str) -> str:
    from captioning.loading import looks_local

    return str(Path(name).resolve()) if looks_local(name) else name


def load_base(cfg: TrainConfig) -> LoadedBase:
    """The base model (fp32, or quantised per cfg.quantization) and its configured processor."""
    m, d = cfg.model, cfg.data
    if m.factory is not None:
        from captioning.families import get_family
        from synthetic.factory import build_model

        model, processor = build_model(m.factory.family, m.factory.size, seed=m.factory.seed)
        family = get_family(m.family if m.family != "auto" else m.factory.family)
        family.configure_processor(processor, image_longest_edge=d.image_longest_edge,
                                   image_splitting=d.image_splitting)
        family.prepare_model(model, processor)
        return LoadedBase(model, processor, family, None, family.default_prompt)
    if cfg.quantization.enabled:
        return _load_quantized(cfg)
    from captioning.loading import load_captioner

    # fp32 weights even on a GPU: the Trainer's bf16/fp16 autocast keeps fp32 master weights.
    cap = load_captioner(m.name_or_path, revision=m.revision, dtype="fp32", device="cpu",
                         trust_remote_code=m.trust_remote_code, family=None if m.family == "auto" else m.family,
                         image_longest_edge=d.image_longest_edge, image_splitting=d.image_splitting)
    model = cap.model
    base_ref = _base_ref(cap.source)
    if cap.adapter is not None:
        # Starting from an earlier adapter: train on its merged weights. The new adapter then
        # needs that merged model as its base, so this is only allowed for full fine-tuning.
        if cfg.lora.enabled:
            raise UserError(f"model.name_or_path {m.name_or_path} is an adapter: a new adapter cannot point at "
                            "adapter + base; merge it first (release merge) and train on the merged folder")
        model = model.merge_and_unload()
    model.train()
    return LoadedBase(model, cap.processor, cap.family, base_ref, cap.prompt)


def _load_quantized(cfg: TrainConfig) -> LoadedBase:
    from transformers import AutoConfig, BitsAndBytesConfig

    from captioning.families import family_for_config, get_family
    from captioning.kernels import keep_4bit_cpu_kernel_to_shapes_it_packs
    from captioning.loading import ensure_hub_reachable
    from captioning.records import TrainConfigRecord

    m, q, d = cfg.model, cfg.quantization, cfg.data
    name = m.name_or_path
    if Path(name).is_dir():
        if (Path(name) / "adapter_config.json").is_file():
            raise UserError(f"model.name_or_path {name} is an adapter: quantised training needs a full model "
                            "folder or hub id (merge the adapter first)")
    else:
        ensure_hub_reachable(name, revision=m.revision)
    try:
        config = AutoConfig.from_pretrained(name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model.name_or_path {name}: cannot read its config ({e})") from e
    family = get_family(m.family) if m.family != "auto" else family_for_config(config)
    device_type = training_device_type()
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        resolve_precision(cfg.optim.precision, device_type), torch.float32)
    # Modules that train fully must stay unquantised (bitsandbytes weights cannot take gradients).
    probe_names = _full_train_modules(cfg, family, None)
    skip = (["lm_head"] + probe_names) if probe_names else None
    if q.load_in_4bit:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                 bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=compute,
                                 llm_int8_skip_modules=skip)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    device_map = {"": torch.cuda.current_device()} if device_type == "cuda" else {"": "cpu"}
    try:
        model = family.model_class().from_pretrained(name, revision=m.revision, quantization_config=bnb,
                                                     dtype=compute, device_map=device_map,
                                                     trust_remote_code=m.trust_remote_code)
    except ImportError as e:
        raise UserError(f"quantization: {e} (pip install bitsandbytes)") from e
    if q.load_in_4bit:
        keep_4bit_cpu_kernel_to_shapes_it_packs(model)
    processor = family.load_processor(name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    family.configure_processor(processor, image_longest_edge=d.image_longest_edge, image_splitting=d.image_splitting)
    family.prepare_model(model, processor)
    prev = TrainConfigRecord.find(name) if Path(name).is_dir() else None
    prompt = prev.prompt if prev and prev.has_prompt else family.default_prompt
    return LoadedBase(model, processor, family, _base_ref(name), prompt)


# ---------------------------------------------------------------- trainable parameters
def _top_level(names: list[str]) -> list[str]:
    """Drop names nested inside another name of the list (keep ``a.b``, drop ``a.b.c``)."""
    keep = []
    for n in sorted(names, key=len):
        if not any(n.startswith(k + ".") for k in keep):
            keep.append(n)
    return keep


def _full_train_modules(cfg: TrainConfig, family, model) -> list[str]:
    """Modules trained in full next to a LoRA adapter (peft modules_to_save): the connector
    with model.train_connector, the vision tower with model.freeze_vision off. Without a
    model (before loading) returns the family's short names for quantisation skipping."""
    wanted = []
    if cfg.model.train_connector:
        if not family.connector_pattern:
            raise UserError(f"model.train_connector: the {family.name} family has no separate connector "
                            "(its image-text cross-attention is in the text decoder, which LoRA already adapts)")
        wanted.append(family.connector_pattern)
    if not cfg.model.freeze_vision:
        wanted.append(family.vision_pattern)
    if model is None:
        # transformers matches skip patterns as regexes from the start of the module path
        return [f".*(?:{pat})" for pat in wanted]
    out = []
    for pat in wanted:
        found = _top_level(family.module_names(model, pat))
        if not found:
            raise UserError(f"no module of this model matches the {family.name} pattern {pat!r}")
        out += found
    return out


def _matches(model, targets) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        rx = re.compile(targets)
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def lora_targets(model, family, cfg: TrainConfig) -> tuple[str | list[str], str]:
    """(the LoRA targets for ``model``, who chose them: ``lora.target_modules``, ``family`` or
    ``derived``: every language-model linear layer, :meth:`Family.lora_targets`). A UserError
    when they match no module."""
    if cfg.lora.target_modules:
        targets, source = cfg.lora.target_modules, "lora.target_modules"
    else:
        source = "family" if family.lora_target_regex is not None else "derived"
        if source == "derived" and not family.language_linear_names(model):
            raise UserError(f"no linear layer found in this model's language model (the {family.name} family "
                            "leaves out the vision tower, the connector and the output head): set lora.target_modules")
        targets = family.lora_targets(model)
    if not _matches(model, targets):
        raise UserError(f"lora.target_modules {targets!r} matches no module of this model (names look like "
                        f"{next(n for n, _ in model.named_modules() if n.endswith('proj') or '.' in n)})")
    return targets, source


def lora_coverage(model, family, cfg: TrainConfig) -> dict[str, Any]:
    """What the LoRA targets :func:`setup_trainable` will wrap reach of the language model's
    linear layers (captioning.lora_targets.coverage); read on the model before it is wrapped.
    The modules are matched as peft matches them (:func:`_matches`)."""
    from captioning.lora_targets import coverage

    targets, source = lora_targets(model, family, cfg)
    module_names = [n for n, _ in model.named_modules() if n]
    return coverage(family.language_linear_names(model), _matches(model, targets), module_names, source=source)


def setup_trainable(model, family, cfg: TrainConfig):
    """Freeze what must not train and wrap LoRA where asked. Returns the model to train
    (a PeftModel for LoRA/QLoRA)."""
    from transformers import set_seed

    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.quantization.enabled:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.optim.activation_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if not cfg.lora.enabled:
        groups = family.parameter_groups(model)
        trainable = set() if cfg.model.freeze_language else set(groups["language"])
        if cfg.model.train_connector:
            if not family.connector_pattern:
                _full_train_modules(cfg, family, model)  # raises the explanatory error
            trainable |= set(groups["connector"])
        if not cfg.model.freeze_vision:
            trainable |= set(groups["vision"])
        for name, p in model.named_parameters():
            if name in trainable:
                p.requires_grad_(True)
        return model

    from peft import LoraConfig, get_peft_model

    targets, _ = lora_targets(model, family, cfg)
    if cfg.lora.target_modules is None:
        cfg.lora.target_modules = targets  # the resolved config records what was adapted
    extra = list(cfg.lora.modules_to_save or [])
    for name in extra:
        if not _matches(model, [name]):
            raise UserError(f"lora.modules_to_save: no module named {name!r} in this model")
    lora_cfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora,
                          bias=cfg.lora.bias,
                          modules_to_save=_full_train_modules(cfg, family, model) + extra or None)
    # LoRA A matrices are drawn from the global RNG: seed right before wrapping.
    set_seed(cfg.optim.seed)
    model = get_peft_model(model, lora_cfg)
    if cfg.optim.activation_checkpointing:
        # With a frozen tower and frozen embeddings nothing before the first LoRA layer needs
        # grad; reentrant checkpointing would then drop all gradients. Non-reentrant
        # checkpointing (set in the Trainer args) does not need this, but it is cheap insurance.
        model.enable_input_require_grads()
    return model


def parameter_report(model, family) -> dict[str, int]:
    """Trainable and total parameter counts (unique tensors)."""
    seen: dict[int, tuple[int, bool]] = {}
    for _, p in model.named_parameters():
        n = p.numel()
        if hasattr(p, "quant_storage") or p.dtype == torch.uint8:
            n *= 2  # 4-bit weights pack two values per byte
        seen.setdefault(id(p), (n, p.requires_grad))
    total = sum(n for n, _ in seen.values())
    trainable = sum(n for n, t in seen.values() if t)
    return {"trainable": trainable, "total": total}


def compute_dtype(model) -> torch.dtype:
    """The floating dtype the model's (unquantised) weights use."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
