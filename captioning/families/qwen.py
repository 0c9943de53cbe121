"""Qwen-VL: Qwen2-VL (Qwen/Qwen2-VL-2B-Instruct, -7B), Qwen2.5-VL (Qwen/Qwen2.5-VL-3B-Instruct,
-7B) and Qwen3-VL (Qwen/Qwen3-VL-2B-Instruct, -4B, -8B).

The chat template (ChatML, ``<|im_end|>`` closing each turn) is served by the base class.
What differs: the connector (``visual.merger``, and Qwen3-VL's deepstack mergers) sits
inside the vision module; images are not resized to a fixed square but to a pixel budget
that sets how many image tokens they cost; the processor returns a flat patch tensor per
batch (``pixel_values`` of shape [patches, dim] with ``image_grid_thw`` saying which patches
belong to which image), and ``mm_token_type_ids`` per token, which the base class extends
over the caption.
"""

from __future__ import annotations

from captioning.families import register
from captioning.families.base import Family


@register
class QwenVLFamily(Family):
    name = "qwen_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    vision_pattern = r"(^|\.)visual(\.|$)"
    # matched before the vision pattern (Family.parameter_groups), so the mergers count as connector
    connector_pattern = r"(^|\.)visual\.(merger|deepstack_merger_list)(\.|$)"
    image_options = ("image_longest_edge",)

    def configure_processor(self, processor, *, image_longest_edge=None, image_splitting=None):
        """``image_longest_edge`` N: a pixel budget of N x N. Each image is resized (aspect kept,
        sides multiples of the patch x merge size) to at most N*N pixels, so it costs at most
        N*N / (patch * merge)^2 image tokens: 1024 px gives 1337 tokens on Qwen2-VL (14 px
        patches), 1024 on Qwen3-VL (16 px). The published default budget is 12.8M pixels."""
        self.check_image_options(image_longest_edge=image_longest_edge, image_splitting=image_splitting)
        if image_longest_edge is not None:
            ip = processor.image_processor
            budget = int(image_longest_edge) ** 2
            size = dict(ip.size.items()) if hasattr(ip.size, "items") else {}
            size["longest_edge"] = budget
            size["shortest_edge"] = min(int(size.get("shortest_edge") or budget), budget)
            ip.size = size
