"""CPU inference kernels: what a loaded model's Linear layers run as on a CPU.

- :func:`prepack_linear`: fp32 weights laid out once for oneDNN's matmul (captions unchanged).
- :func:`quantize_int8`: PyTorch dynamic int8 (int8 weights, activations quantised at run time).
- :func:`fuse_siblings`: sibling layers that read the same input (q/k/v, gate/up) run as one
  product, for both of the above.
- :func:`keep_4bit_cpu_kernel_to_shapes_it_packs`: bitsandbytes 4-bit on AVX512-BF16 CPUs.

Their speed and accuracy are measured in BENCHMARKS.md ("int8 serving", "CPU captioning
speed"); captioning.loading applies them.
"""

from __future__ import annotations

import torch


def quantize_int8(model):
    """``model`` with every Linear layer replaced by PyTorch's dynamically quantised one: int8
    weights (per output channel), activations quantised to int8 per call, int8 GEMMs through
    the CPU's quantised engine (fbgemm/oneDNN: VNNI where the CPU has it). The fp32 weights are
    dropped as each layer is replaced.

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
    which streams the weights on one thread; the prepacked layer streams them on every core,
    faster (BENCHMARKS.md, "int8 serving on CPU", its fp32 text side). Same
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
