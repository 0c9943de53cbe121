"""CPU inference kernels: what a loaded model's Linear layers run as on a CPU.

- :func:`prepack_linear`: fp32 weights laid out once for oneDNN's matmul (captions unchanged).
- :func:`quantize_int8`: PyTorch dynamic int8 (int8 weights, activations quantised at run time).
- :func:`fuse_siblings`: sibling layers that read the same input (q/k/v, gate/up) run as one
  product, for both of the above.
- :func:`keep_4bit_cpu_kernel_to_shapes_it_packs`: bitsandbytes 4-bit on AVX512-BF16 CPUs.

Every layer they put in place keeps what other code reads from an ``nn.Linear``:
``in_features``, ``out_features``, ``bias`` and ``weight`` (a :class:`LayerWeight`: the layer's
shape, dtype and device, free to read, and its values unpacked when an operation uses them), so
model code that reads, say, ``self.patch_embedding.weight.dtype`` (SigLIP2's patch embedding)
runs unchanged.

Their speed and accuracy are measured in BENCHMARKS.md ("int8 serving", "CPU captioning
speed"); captioning.loading applies them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.utils._pytree import tree_map


class LayerWeight(torch.Tensor):
    """The weight (or bias) of a layer that stores it packed (oneDNN's blocked layout, int8),
    as code written for ``nn.Linear`` reads it: a tensor with the weight's shape, dtype and
    device, which cost nothing to read (model code reads them on every call to cast its input,
    as SigLIP2's patch embedding does), holding no copy of the values; any operation on it
    (``F.linear``, ``.T``, ``torch.equal``, ...) runs on the values ``read()`` unpacks for it,
    so it computes what the layer does. Read-only: an in-place write (``copy_``, ``.data.mul_``)
    raises instead of changing a copy the layer never reads.

    Why not the plain weight: keeping it would keep the memory the packed layer saves, and a
    stand-in with the right dtype but no values (or values of zero) would make code that reads
    the values wrong instead of slow."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, read: Callable[[], torch.Tensor], shape, dtype: torch.dtype, device: torch.device):
        # made outside inference mode, like a Parameter: usable in and out of it
        with torch.inference_mode(False):
            return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)

    def __init__(self, read: Callable[[], torch.Tensor], shape, dtype: torch.dtype, device: torch.device):
        self._read = read

    def read(self) -> torch.Tensor:
        """The values, as a plain tensor (a new one at each call)."""
        with torch.inference_mode(False):
            return self._read()

    def rows(self, start: int, end: int) -> LayerWeight:
        """Rows ``start:end`` (a sibling's part of a shared product), read the same way."""
        return LayerWeight(lambda: self._read()[start:end], (end - start, *self.shape[1:]), self.dtype, self.device)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, arg in enumerate(func._schema.arguments):  # copy_, mul_, out=...: written, not only read
            written = args[i] if i < len(args) else kwargs.get(arg.name)
            if arg.alias_info is not None and arg.alias_info.is_write and isinstance(written, LayerWeight):
                raise RuntimeError(f"{func.__name__}: this weight belongs to a layer packed for CPU inference and "
                                   "is read-only; load the model with prepack=False (--no-prepack) and without "
                                   "quantize to change its weights")
        if func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):  # .detach(), .data
            t = args[0]
            return LayerWeight(t._read, t.shape, t.dtype, t.device)
        with torch.inference_mode(False):
            plain = tree_map(lambda t: t._read() if isinstance(t, LayerWeight) else t, (args, kwargs))
            return func(*plain[0], **plain[1])

    def tolist(self):  # the two reads torch refuses to dispatch for a tensor subclass
        return self.read().tolist()

    def numpy(self, *, force: bool = False):
        return self.read().numpy(force=force)

    def __repr__(self) -> str:
        return f"LayerWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"


def rows(t: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """Rows ``start:end`` of a layer's weight or bias (None stays None): a view of a plain
    tensor, a :class:`LayerWeight` of a packed one."""
    if isinstance(t, LayerWeight):
        return t.rows(start, end)
    return None if t is None else t[start:end]


class Int8Linear(DynamicInt8Linear):
    """PyTorch's dynamic int8 Linear (what :func:`quantize_int8` puts in place) with ``weight``
    and ``bias`` read as from an ``nn.Linear`` (:class:`LayerWeight`s, where PyTorch's are
    methods returning int8 tensors): ``weight`` is the dequantised int8 weight, in the float
    dtype the layer takes and returns (the original weight's dtype), so code that casts its
    input to ``layer.weight.dtype`` feeds the layer what it expects."""

    def __init__(self, in_features, out_features, bias_=True, dtype=torch.qint8):
        super().__init__(in_features, out_features, bias_, dtype=dtype)
        self.compute_dtype = torch.float32
        self.has_bias = bias_

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        layer = super().from_float(mod, use_precomputed_fake_quant=use_precomputed_fake_quant)
        layer.compute_dtype = mod.weight.dtype
        return layer

    def set_weight_bias(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        super().set_weight_bias(w, b)
        self.has_bias = b is not None

    @property
    def weight(self) -> LayerWeight:  # type: ignore[override]
        return LayerWeight(lambda: self._weight_bias()[0].dequantize().to(self.compute_dtype),
                           (self.out_features, self.in_features), self.compute_dtype, torch.device("cpu"))

    @property
    def bias(self) -> LayerWeight | None:  # type: ignore[override]
        if not self.has_bias:
            return None
        return LayerWeight(lambda: self._weight_bias()[1].to(self.compute_dtype), (self.out_features,),
                           self.compute_dtype, torch.device("cpu"))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, dtype={self._packed_params.dtype}, "
                f"qscheme={self._weight_bias()[0].qscheme()}")


def quantize_int8(model):
    """``model`` with every Linear layer replaced by PyTorch's dynamically quantised one: int8
    weights (per output channel), activations quantised to int8 per call, int8 GEMMs through
    the CPU's quantised engine (fbgemm/oneDNN: VNNI where the CPU has it). The fp32 weights are
    dropped as each layer is replaced. The layers are :class:`Int8Linear`: PyTorch's, keeping
    ``nn.Linear``'s ``weight`` and ``bias``.

    PyTorch's own dynamic quantisation, not torchao's: torchao's int8
    (Int8DynamicActivationInt8WeightConfig through TorchAoConfig) runs each layer through
    tensor-subclass dispatch in eager mode, which made captioning slower than fp32 where this
    is faster (BENCHMARKS.md, "int8 serving on CPU"). torch.ao.quantization is
    deprecated in favour of torchao, so its warnings are silenced here; it still ships in
    torch 2.13.
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                 mapping={torch.nn.Linear: Int8Linear}, inplace=True)
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

    @property
    def weight(self) -> torch.Tensor:
        """This sibling's rows of the shared weight (read-only where that is packed)."""
        return rows(self.product.linear.weight, self.product.ends[self.index], self.product.ends[self.index + 1])

    @property
    def bias(self) -> torch.Tensor | None:
        return rows(self.product.linear.bias, self.product.ends[self.index], self.product.ends[self.index + 1])

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
    which streams the weights on one thread; the prepacked layer streams them on every core,
    faster (BENCHMARKS.md, "int8 serving on CPU", its fp32 text side). Same
    arithmetic, another summation order: outputs agree to float32 rounding, and trained
    models give the same greedy captions (tests/test_prepack.py, bench/int8_quality.py).

    Only this wrapper is ours (no module in torch or transformers swaps it in for eager
    inference). No parameters: the packed weight is an opaque oneDNN tensor, so the layer
    refuses training and saving instead of silently doing neither. ``weight`` reads as an
    ``nn.Linear``'s (a read-only :class:`LayerWeight`: fp32, its shape and device, the original
    values unpacked where used).
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().float(), PACK_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    @property
    def weight(self) -> LayerWeight:
        return LayerWeight(self.packed.to_dense, self.packed.shape, self.packed.dtype, self.packed.device)

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
