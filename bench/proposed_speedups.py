"""Speed changes proposed for the model families, measurable before they are adopted.

    python bench/generation_speed.py --proposed     # adds a "batched_proposed" variant

Each function changes a loaded captioner in place and says whether it changed anything;
once a family applies the change itself (``prepare_model`` / ``configure_processor``),
the function finds nothing to do and the variant equals "batched".

Adopted so far: BLIP's vision attention through SDPA (now ``BlipFamily.prepare_model``,
captioning/families/blip.py): proposed here first, it measured 2.04x vs 1.66x for the
plain batch of 16 in one alternating run, with the same token ids as the eager model.

1. SmolVLM one-crop preprocessing without the 4x detour. With image splitting off, the
   Idefics3 image processor still resizes to ``size["longest_edge"]`` (2048 for
   SmolVLM) with LANCZOS, then again down to the 512 crop: ~0.13 CPU-s per 640x480 image,
   ~4x the direct resize. Setting ``size = {"longest_edge": max_image_size}`` when
   splitting is off (and no ``image_longest_edge`` was asked for) gives the same 512x512
   crop in one resampling step (pixel values differ slightly: one LANCZOS pass, not two).
   Where: ``Idefics3Family.configure_processor`` (captioning/families/idefics3.py).
"""

from __future__ import annotations


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
    if name == "idefics3":
        return {"idefics3_direct_resize": idefics3_direct_resize(captioner.processor)}
    return {}
