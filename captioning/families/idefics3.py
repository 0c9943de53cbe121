"""SmolVLM: the Idefics3 architecture (HuggingFaceTB/SmolVLM-Instruct, SmolVLM-256M-Instruct,
SmolVLM-500M-Instruct) and SmolVLM2 (model type ``smolvlm``: SmolVLM2-256M/500M-Video-Instruct,
SmolVLM2-2.2B-Instruct), which shares its processor behaviour for images."""

from __future__ import annotations

from captioning.families import register
from captioning.families.base import Family


@register
class Idefics3Family(Family):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    vision_pattern = r"(^|\.)vision_model(\.|$)"
    connector_pattern = r"(^|\.)connector(\.|$)"
    image_options = ("image_longest_edge", "image_splitting")
    feature_cache = True
    int8_on_cpu = True  # int8 kept the shapes demo models' captions within the gate (BENCHMARKS.md)

    def configure_processor(self, processor, *, image_longest_edge=None, image_splitting=None):
        """``image_splitting`` off: one crop at the vision encoder's size (64 image
        tokens on SmolVLM-256M). On (the processor default): the image is resized so
        its longest edge is ``image_longest_edge`` (SmolVLM default 4x the encoder
        size) and cut into crops plus a global view: ~17x the vision compute."""
        ip = processor.image_processor
        if image_splitting is not None:
            ip.do_image_splitting = bool(image_splitting)
        if image_longest_edge is not None:
            ip.size = {"longest_edge": int(image_longest_edge)}

    def image_features(self, model, pixel_inputs):
        return list(model.get_image_features(**pixel_inputs).pooler_output)

    def feature_inputs(self, inputs):
        """Cached features go in as ``mm_encoder_outputs``, which the Idefics3 and SmolVLM
        forwards take instead of pixels."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs = dict(inputs)
        feats = inputs.pop("image_features")
        inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
        return inputs
