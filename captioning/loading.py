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

from captioning.cli import QUANTIZE_CHOICES
from captioning.errors import UserError
from captioning.families import Family, family_for_config, get_family
from captioning.files import check_model_folder, special_file_problem
from captioning.records import TrainConfigRecord, adapter_base

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
        raise UserError(f"--dtype {dtype!r} is not supported: use auto, fp32, bf16 or fp16")
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
    quantised at run time (:func:`quantize_int8`); an adapter is merged into the
    full-precision weights first.

    ``prepack=True`` (inference only; acts for fp32 on CPU): every Linear layer's weight is
    laid out once for oneDNN's matmul (:func:`prepack_linear`): faster captions with the same
    greedy tokens, but a model that can no longer be trained or saved. Every captioning entry
    point (captioning.caption, eval generate, the Space) passes it. Prepacked and int8 models
    alike run sibling layers that read the same input as one product (:func:`fuse_siblings`).
    """
    from transformers import AutoConfig

    quantize = check_quantize(quantize)
    if quantize == "int8" and load_in_4bit:
        raise UserError("--quantize int8 and --load-in-4bit are two different quantisations: pick one")

    model = str(model)
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
    train_cfg = record.doc if record else None
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

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        config = AutoConfig.from_pretrained(base, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(f"{base} ships its own model code: pass --trust-remote-code if you trust it") from e
        raise UserError(f"{base}: cannot read its config ({e})") from e
    except OSError as e:
        raise UserError(f"{base}: no loadable config.json ({e.__class__.__name__}); "
                        "pass a model folder or hub id") from e

    if family is None and record:
        family = record.family
    fam = get_family(family) if family and family != "auto" else family_for_config(config)
    if quantize == "auto":  # the Space's default: int8 on CPU where the family's int8 captions passed the gate
        quantize = "int8" if dev.type == "cpu" and fam.int8_on_cpu and not load_in_4bit else None
    if quantize == "int8" and dev.type != "cpu":
        raise UserError(f"--quantize int8 is for CPU serving, not {dev.type}: on a GPU use --dtype bf16 "
                        "(or --load-in-4bit for memory)")

    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    prepack = (prepack and not quantize and not load_in_4bit and dev.type == "cpu"
               and torch_dtype == torch.float32 and torch.backends.mkldnn.is_available())
    if quantize or prepack:
        # read the weights into memory instead of mapping the file: a mapped file stays resident
        # (and counted) as long as any tensor views it, long after its Linear weights are replaced
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
    proc_src = adapter_dir if adapter_dir is not None and _has_processor(adapter_dir) else base
    processor = fam.load_processor(str(proc_src), revision=None if proc_src != base else revision,
                                   trust_remote_code=trust_remote_code)
    fam.configure_processor(processor, image_longest_edge=image_longest_edge, image_splitting=image_splitting)
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            net = PeftModel.from_pretrained(net, str(adapter_dir))
        except (ValueError, KeyError, RuntimeError, TypeError) as e:  # peft's "modules not found", size mismatch
            first = " ".join(str(e).split())[:200]
            raise UserError(f"the adapter {adapter_dir} does not fit the base {base} ({type(e).__name__}: {first}); "
                            "pass the base it was trained on (its adapter_config.json names it)") from e
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
                     train_config=train_cfg, prompt=prompt or None, quantize=quantize)


def keep_4bit_cpu_kernel_to_shapes_it_packs(net) -> int:
    """bitsandbytes (0.50) serves a 4-bit Linear in inference on an AVX512-BF16 CPU by first
    repacking its weight in blocks of 32 outputs by ``blocksize`` inputs; a layer whose shape
    does not divide fails there with a reshape error (tiny models, odd widths), and only on
    such CPUs. Those layers take bitsandbytes' portable path instead; the others keep the fast
    one. Written here because bitsandbytes checks no shape before repacking. Returns how many
    layers were switched."""
    switched = 0
    for module in net.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            block = getattr(module.weight, "blocksize", None) or 64
            if module.out_features % 32 or module.in_features % block or module.in_features % 2:
                module.support_avx512bf16_for_cpu = False
                switched += 1
    return switched


def check_quantize(quantize: str | None) -> str | None:
    """Normalise a --quantize value: None for none; UserError when unknown."""
    if quantize in (None, "", "none"):
        return None
    if quantize not in QUANTIZE_CHOICES and quantize != "auto":
        raise UserError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    return quantize


def quantize_int8(model):
    """``model`` with every Linear layer replaced by PyTorch's dynamically quantised one: int8
    weights (per output channel), activations quantised to int8 per call, int8 GEMMs through
    the CPU's quantised engine (fbgemm/oneDNN: VNNI where the CPU has it). The fp32 weights are
    dropped as each layer is replaced.

    PyTorch's own dynamic quantisation, not torchao's: measured on a 2-core CPU, torchao's int8
    (Int8DynamicActivationInt8WeightConfig through TorchAoConfig) runs each layer through
    tensor-subclass dispatch in eager mode and captioned SmolVLM-256M 3x SLOWER than fp32,
    while this was 2.5x faster (BENCHMARKS.md, "int8 serving"). torch.ao.quantization is
    deprecated in favour of torchao, so its warnings are silenced here; it still ships in
    torch 2.13.
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                 inplace=True)
    return model


class SiblingProduct(torch.nn.Module):
    """One product for sibling Linear layers that a model calls one after another on the same
    input (an attention's q, k and v projections; an MLP's gate and up projections): their
    weights stacked in one ``nn.Linear`` (``self.linear``), which prepack_linear or quantize_int8
    then replace like any other. The first sibling called computes all their outputs in one call
    and each sibling (:class:`SiblingLinear`) returns its own columns, a view: fewer, larger
    products stream the weights faster (SmolVLM-256M's decode step: 4 products per layer
    instead of 7; BENCHMARKS.md). Each output column is the same dot product as before, and int8
    quantises the shared input once, as each sibling did.

    Keyed on the input's identity: a sibling called on another input (an attention used for
    cross-attention reads k and v from the encoder's states) computes the product of that input
    afresh, so a result is never stale, at worst partly unused. The output is released once
    every sibling has taken its columns. Written here: transformers and torch fuse projections
    only inside compiled graphs.
    """

    def __init__(self, linears: list[torch.nn.Linear]):
        super().__init__()
        first = linears[0]
        self.ends = [0]
        for lin in linears:
            self.ends.append(self.ends[-1] + lin.out_features)
        # built on the meta device (no throwaway initialisation), then given the stacked weights
        self.linear = torch.nn.Linear(first.in_features, self.ends[-1], bias=first.bias is not None, device="meta")
        with torch.no_grad():
            self.linear.weight = torch.nn.Parameter(torch.cat([lin.weight for lin in linears]), requires_grad=False)
            if first.bias is not None:
                self.linear.bias = torch.nn.Parameter(torch.cat([lin.bias for lin in linears]), requires_grad=False)
        #: (input, output, indices of the siblings that took their columns), or None: one tuple,
        #: read once and replaced whole, so threads sharing a model never read another call's output
        self._state: tuple[torch.Tensor, torch.Tensor, frozenset[int]] | None = None

    def columns(self, index: int, x: torch.Tensor) -> torch.Tensor:
        state = self._state
        if state is None or state[0] is not x or index in state[2]:
            state = (x, self.linear(x), frozenset())
        taken = state[2] | {index}
        self._state = None if len(taken) == len(self.ends) - 1 else (x, state[1], taken)
        return state[1][..., self.ends[index]:self.ends[index + 1]]


class SiblingLinear(torch.nn.Module):
    """A Linear layer served by its columns of a :class:`SiblingProduct`. The first sibling holds
    the product as a submodule; the others refer to it without registering it again."""

    def __init__(self, product: SiblingProduct, index: int):
        super().__init__()
        if index == 0:
            self.product = product
        else:
            object.__setattr__(self, "product", product)
        self.index = index
        self.in_features = product.linear.in_features
        self.out_features = product.ends[index + 1] - product.ends[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product.columns(self.index, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sibling {self.index}"


#: sibling Linear layers that the supported families' self-attention and MLP code calls one after
#: another on the same input: each group becomes one SiblingProduct
SIBLING_GROUPS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("gate_proj", "up_proj"))
#: parts of a module's name that mark a cross-attention (its q reads the decoder, k and v the
#: encoder): left alone, as one product there would compute unused columns at every step
CROSS_ATTENTION = ("crossattention", "cross_attn", "encoder_attn")


def fuse_siblings(model):
    """``model`` (for inference) with each group of sibling Linear layers (SIBLING_GROUPS, same
    input size, all with or all without bias) replaced in place by :class:`SiblingLinear` layers
    sharing one :class:`SiblingProduct`; the separate weights are dropped."""
    for path, module in list(model.named_modules()):
        if any(part in path for part in CROSS_ATTENTION):
            continue
        for names in SIBLING_GROUPS:
            linears = [module._modules.get(n) for n in names]
            if (all(type(lin) is torch.nn.Linear for lin in linears)
                    and len({lin.in_features for lin in linears}) == 1
                    and len({lin.bias is None for lin in linears}) == 1):
                product = SiblingProduct(linears)
                for i, name in enumerate(names):
                    setattr(module, name, SiblingLinear(product, i))
    return model


class PrepackedLinear(torch.nn.Module):
    """An fp32 ``nn.Linear`` for CPU inference whose weight oneDNN has reordered once into the
    blocked layout its matmul kernels read (``torch.ops.mkldnn._reorder_linear_weight`` and
    ``_linear_pointwise``: the same ops torch.compile's CPU weight-prepacking pass emits).

    Why: for one token at a time (every decode step) ``nn.Linear`` goes through MKL's sgemm,
    which on a 2-core CPU streamed the weights at about 11 GB/s on one thread; the prepacked
    layer streams them at 17-25 GB/s on both (BENCHMARKS.md, "the fp32 text side"). Same
    arithmetic, another summation order: outputs agree to float32 rounding, and trained
    models give the same greedy captions (tests/test_prepack.py, bench/int8_quality.py).

    Only this wrapper is ours (no module in torch or transformers swaps it in for eager
    inference). No parameters: the packed weight is an opaque oneDNN tensor, so the layer
    refuses training and saving instead of silently doing neither.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().float(), PACK_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("this model's Linear layers are prepacked for CPU inference; load it without "
                               "prepack=True to train it")
        return super().train(False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise RuntimeError("this model's Linear layers are prepacked for CPU inference and hold no saveable "
                           "weights; load it without prepack=True to save it")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


#: the batch-size hint oneDNN lays the weights out for (any batch runs; this is the layout's
#: sweet spot). SmolVLM-256M's text side, hints 1 / 16 / 64: 1.105 / 1.052 / 1.112 s (BENCHMARKS.md).
PACK_HINT = 16


def prepack_linear(model):
    """``model`` (fp32, on CPU, in eval mode) with every ``nn.Linear`` replaced in place by a
    :class:`PrepackedLinear`; each fp32 weight is dropped as its layer is replaced (a weight
    tied to an embedding stays with the embedding)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:  # exactly Linear: not peft's or bitsandbytes' subclasses
                setattr(module, name, PrepackedLinear(child))
    return model


def _has_processor(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("processor_config.json", "preprocessor_config.json",
                                                 "tokenizer_config.json"))
