"""Loading a captioning model: the one place every stage gets model + processor.

``load_captioner("HuggingFaceTB/SmolVLM-256M-Instruct")`` or a local folder (a
release, a training output with an adapter, a factory-built random model).
Hub ids fail at once when the Hub cannot be reached, with a message that says
how to point at a local copy, instead of transformers' long retry loop.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from captioning.errors import UserError
from captioning.families import Family, family_for_config, get_family
from captioning.files import check_model_folder, special_file_problem
from captioning.kernels import fuse_siblings, keep_4bit_cpu_kernel_to_shapes_it_packs, prepack_linear, quantize_int8
from captioning.records import TrainConfigRecord, adapter_base
from captioning.vocabulary import DTYPE_CHOICES, QUANTIZE_CHOICES

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def pick_device(device: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA, then MPS, then CPU; anything else is passed to torch."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r} is not a torch device (try auto, cpu, cuda, cuda:1, mps)") from e
    # checked here, before any loading: torch would fail later, deep inside a model's .to()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build that finds no GPU"
            raise UserError(f"--device {device}: no CUDA GPU here (torch {torch.__version__} is {build}); "
                            "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu or auto")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs and MPS, fp32 on CPU.

    CPUs without native bf16 run bf16/fp16 matmuls many times slower than fp32, so
    half precision is never the CPU default.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"--dtype {dtype!r} is not supported: use {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[dtype]


def looks_local(name: str) -> bool:
    """True when ``name`` is meant as a path rather than a hub id (``name`` or ``org/name``)."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def ensure_hub_reachable(repo_id: str, *, revision: str | None = None, what: str = "model") -> None:
    """Fail fast with a helpful message when a hub id cannot be fetched.

    A copy in the local cache is fine offline; otherwise we probe the endpoint
    with a short TCP connect, because transformers would retry for minutes.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    hint = (f"download it where the Hub is reachable (`hf download {repo_id} --local-dir DIR`) "
            f"and pass that folder instead")
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"cannot load {what} {repo_id!r}: HF_HUB_OFFLINE is set and it is not in the local "
                        f"cache; {hint}")
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as e:
        raise UserError(f"cannot load {what} {repo_id!r}: {url.hostname}:{port} is unreachable ({e.strerror or e}); "
                        f"{hint}") from e


def resolve_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit sha a hub revision points at (None for local folders)."""
    if looks_local(repo_id):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception:
        return None


@dataclass
class Captioner:
    """A loaded model with everything needed to caption with it."""

    model: Any
    processor: Any
    family: Family
    source: str
    revision: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    adapter: str | None = None
    train_config: dict[str, Any] | None = None
    prompt: str | None = None
    #: "int8" when the Linear layers run int8 (QUANTIZE_CHOICES), else None
    quantize: str | None = None

def load_captioner(model: str | Path, *, revision: str | None = None, adapter: str | Path | None = None,
                   dtype: str | torch.dtype | None = "auto", device: str | None = "auto",
                   load_in_4bit: bool = False, trust_remote_code: bool = False, family: str | None = None,
                   prompt: str | None = None, image_longest_edge: int | None = None,
                   image_splitting: bool | None = None, quantize: str | None = None,
                   prepack: bool = False) -> Captioner:
    """Load model + processor (+ optional LoRA adapter) for captioning.

    ``model`` may be a hub id, a model folder, or a training output folder that
    holds an adapter (its base is read from adapter_config.json). A
    ``train_config.yaml`` beside the weights supplies the family and prompt
    unless ``family``/``prompt`` are given. ``quantize="int8"`` (CPU): every Linear layer
    (vision tower, connector, language model, head) runs int8 weights with int8 activations
    quantised at run time (captioning.kernels.quantize_int8); an adapter is merged into the
    full-precision weights first.

    ``prepack=True`` (inference only; acts for fp32 on CPU): every Linear layer's weight is
    laid out once for oneDNN's matmul (captioning.kernels.prepack_linear): faster captions
    with the same greedy tokens, but a model that can no longer be trained or saved. Every
    captioning entry point (captioning.caption, eval generate, the Space) passes it unless
    given ``--no-prepack``. Prepacked and int8 layers still read as ``nn.Linear`` (``weight``,
    ``bias``, ``in_features``, ``out_features``: captioning.kernels), so model code that reads
    them runs either way.
    """
    quantize = check_quantize(quantize)
    if quantize == "int8" and load_in_4bit:
        raise UserError("--quantize int8 and --load-in-4bit are two different quantisations: pick one")
    base, adapter_dir, record = _sources(str(model), adapter, revision)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    config = _read_config(base, revision, trust_remote_code)
    if family is None and record:
        family = record.family
    fam = get_family(family) if family and family != "auto" else family_for_config(config)
    if quantize == "auto":  # the Space's default: int8 on CPU where the family's int8 captions passed the gate
        quantize = "int8" if dev.type == "cpu" and fam.int8_on_cpu and not load_in_4bit else None
    if quantize == "int8" and dev.type != "cpu":
        raise UserError(f"--quantize int8 is for CPU serving, not {dev.type}: on a GPU use --dtype bf16 "
                        "(or --load-in-4bit for memory)")
    prepack = (prepack and not quantize and not load_in_4bit and dev.type == "cpu"
               and torch_dtype == torch.float32 and torch.backends.mkldnn.is_available())
    net = _load_weights(fam, base, revision, dev, torch_dtype, trust_remote_code, load_in_4bit,
                        in_memory=bool(quantize or prepack))
    proc_src = adapter_dir if adapter_dir is not None and _has_processor(adapter_dir) else base
    processor = fam.load_processor(str(proc_src), revision=None if proc_src != base else revision,
                                   trust_remote_code=trust_remote_code)
    fam.configure_processor(processor, image_longest_edge=image_longest_edge, image_splitting=image_splitting)
    if adapter_dir is not None:
        net = _apply_adapter(net, adapter_dir, base)
    if not load_in_4bit:
        net = net.to(dev)
    if quantize or prepack:
        if adapter_dir is not None:
            net = net.merge_and_unload()  # LoRA merged into the full-precision weights, then quantised/packed
        fuse_siblings(net)
        net = quantize_int8(net) if quantize else prepack_linear(net)
    net.eval()
    fam.prepare_model(net, processor)

    if prompt is None:
        prompt = record.prompt if record and record.has_prompt else fam.default_prompt
    return Captioner(model=net, processor=processor, family=fam, source=base, revision=revision, device=dev,
                     dtype=torch_dtype, adapter=str(adapter_dir) if adapter_dir else None,
                     train_config=record.doc if record else None, prompt=prompt or None, quantize=quantize)


def _sources(model: str, adapter: str | Path | None,
             revision: str | None) -> tuple[str, Path | None, TrainConfigRecord | None]:
    """(base model id or folder, adapter folder or None, the training record that goes with
    them) for ``--model``/``--adapter``; every way they can be wrong is one UserError here,
    before anything loads."""
    if not model.strip():
        raise UserError("--model is empty: pass a model folder or a hub id like org/name")
    if looks_local(model):
        problem = special_file_problem(Path(model))
        if problem and "folder" not in problem:
            raise UserError(f"--model {model} is {problem}")
        if not Path(model).is_dir():
            raise UserError(f"--model {model}: no such folder (pass a hub id like org/name, or a model folder)")
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is None and Path(model).is_dir() and (Path(model) / "adapter_config.json").is_file():
        adapter_dir = Path(model)
    record = TrainConfigRecord.find(adapter_dir) or (TrainConfigRecord.find(model) if Path(model).is_dir() else None)
    base = model
    if adapter_dir is not None:
        if not (adapter_dir / "adapter_config.json").is_file():
            raise UserError(f"--adapter {adapter_dir}: no adapter_config.json there; pass the folder written by "
                            "training/train.py")
        if adapter_dir == Path(model):
            base = adapter_base(adapter_dir)
            if not base:
                raise UserError(f"{adapter_dir}/adapter_config.json names no base model: pass --model BASE "
                                f"--adapter {adapter_dir}")
    if base != model and looks_local(base) and not Path(base).is_dir():
        raise UserError(f"{adapter_dir}/adapter_config.json names the base {base}, which is not a folder here; pass "
                        f"--model BASE --adapter {adapter_dir} with the base's folder or hub id")
    for folder in (base, adapter_dir):
        if folder is not None and Path(folder).is_dir():
            check_model_folder(folder)
    if not Path(base).is_dir():
        ensure_hub_reachable(base, revision=revision)
    elif not (Path(base) / "config.json").is_file():
        what = "" if base == model else f"the base named in {adapter_dir}/adapter_config.json, "
        raise UserError(f"{what}{base}: no config.json there, so it is not a saved model; pass the folder that "
                        "save_pretrained() or training/train.py wrote (or a hub id)")
    return base, adapter_dir, record


def _read_config(base: str, revision: str | None, trust_remote_code: bool):
    """``base``'s transformers config; a one-line UserError when it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(f"{base} ships its own model code: pass --trust-remote-code if you trust it") from e
        raise UserError(f"{base}: cannot read its config ({e})") from e
    except OSError as e:
        raise UserError(f"{base}: no loadable config.json ({e.__class__.__name__}); "
                        "pass a model folder or hub id") from e


def _load_weights(fam: Family, base: str, revision: str | None, dev: torch.device, torch_dtype: torch.dtype,
                  trust_remote_code: bool, load_in_4bit: bool, *, in_memory: bool):
    """The family's model class loaded from ``base`` (4-bit through bitsandbytes if asked).
    ``in_memory``: read the weights instead of mapping the file, for a model whose Linear
    weights are about to be replaced (a mapped file stays resident, and counted, as long as any
    tensor views it)."""
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if in_memory:
        kwargs["disable_mmap"] = True
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    net = fam.model_class().from_pretrained(base, **kwargs)
    if load_in_4bit:
        keep_4bit_cpu_kernel_to_shapes_it_packs(net)
    return net


def _apply_adapter(net, adapter_dir: Path, base: str):
    """``net`` with the LoRA adapter of ``adapter_dir``; a UserError when it does not fit."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(net, str(adapter_dir))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:  # peft's "modules not found", size mismatch
        first = " ".join(str(e).split())[:200]
        raise UserError(f"the adapter {adapter_dir} does not fit the base {base} ({type(e).__name__}: {first}); "
                        "pass the base it was trained on (its adapter_config.json names it)") from e


def check_quantize(quantize: str | None) -> str | None:
    """Normalise a --quantize value: None for none; UserError when unknown."""
    if quantize in (None, "", "none"):
        return None
    if quantize not in QUANTIZE_CHOICES and quantize != "auto":
        raise UserError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    return quantize


def _has_processor(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("processor_config.json", "preprocessor_config.json",
                                                 "tokenizer_config.json"))
