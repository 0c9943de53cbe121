"""Speed changes proposed for the model families, measurable before they are adopted.

    python bench/generation_speed.py --proposed     # adds a "batched_proposed" variant

Each function changes a loaded captioner in place and says whether it changed anything;
once a family applies the change itself (``prepare_model`` / ``configure_processor``),
the function finds nothing to do and the variant equals "batched".

1. BLIP vision attention through ``torch.nn.functional.scaled_dot_product_attention``.
   transformers 5.23's ``BlipAttention`` always runs eager attention (``_supports_sdpa``
   is False for BLIP): it materialises 12 x 577 x 577 scores per image per layer, ~30%
   of the vision tower's time on a 2-core CPU. SDPA computes the same function without
   them (max |diff| ~1e-6 on the vision output, greedy captions unchanged).
   Where: ``BlipFamily.prepare_model`` (captioning/families/blip.py).
2. SmolVLM one-crop preprocessing without the 4x detour. With image splitting off, the
   Idefics3 image processor still resizes to ``size["longest_edge"]`` (2048 for
   SmolVLM) with LANCZOS, then again down to the 512 crop: ~0.13 CPU-s per 640x480 image,
   ~4x the direct resize. Setting ``size = {"longest_edge": max_image_size}`` when
   splitting is off (and no ``image_longest_edge`` was asked for) gives the same 512x512
   crop in one resampling step (pixel values differ slightly: one LANCZOS pass, not two).
   Where: ``Idefics3Family.configure_processor`` (captioning/families/idefics3.py).
"""

from __future__ import annotations

import types


def _blip_sdpa_forward(self, hidden_states, **kwargs):
    """BlipAttention.forward with SDPA instead of matmul-softmax-matmul (inference; the
    attention weights are not returned)."""
    import torch.nn.functional as F

    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    dropout = self.dropout.p if self.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
    return self.projection(ctx.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


def blip_sdpa_vision(model) -> int:
    """Route every BlipAttention (the vision tower's) through SDPA; returns how many."""
    try:
        from transformers.models.blip.modeling_blip import BlipAttention
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, BlipAttention) and "forward" not in module.__dict__:
            module.forward = types.MethodType(_blip_sdpa_forward, module)
            n += 1
    return n


def idefics3_direct_resize(processor) -> bool:
    """One-crop SmolVLM: resize straight to the crop size instead of via the 4x size."""
    ip = getattr(processor, "image_processor", None)
    if ip is None or getattr(ip, "do_image_splitting", True):
        return False
    crop = ip.max_image_size["longest_edge"]
    if ip.size.get("longest_edge") == crop:
        return False
    ip.size = {"longest_edge": crop}
    return True


def apply(captioner) -> dict[str, int | bool]:
    """Apply every proposal that fits ``captioner``'s family; returns what changed."""
    name = captioner.family.name
    if name == "blip":
        return {"blip_sdpa_vision": blip_sdpa_vision(captioner.model)}
    if name == "idefics3":
        return {"idefics3_direct_resize": idefics3_direct_resize(captioner.processor)}
    return {}
