"""PaliGemma (google/paligemma-3b-pt-224, google/paligemma2-3b-pt-224 and their mix/ft
checkpoints): no chat template. The model reads a task prefix ("caption en") after the
image tokens and bos, and is fine-tuned on a suffix, the processor's own convention
(``processor(text=prefix, images=..., suffix=caption)``): prefix and image attend to each
other in full (``token_type_ids`` 0), the suffix causally (1), labels on the suffix and eos.
"""

from __future__ import annotations

from captioning.families import register
from captioning.families.base import Family


@register
class PaliGemmaFamily(Family):
    name = "paligemma"
    model_types = ("paligemma",)
    default_prompt = "caption en"
    vision_pattern = r"(^|\.)vision_tower(\.|$)"
    connector_pattern = r"(^|\.)multi_modal_projector(\.|$)"
    usage_template = "prefix"

    def build_prompt(self, processor, prompt):
        # the processor writes the image tokens, bos, the prefix and the "\n" that ends it
        return prompt or ""

    def stop_token_ids(self, processor):
        return [self.tokenizer(processor).eos_token_id]  # the processor ends every suffix with eos

    def images_arg(self, images):
        return list(images)

    def token_fill(self, key):
        # collate's right padding continues the suffix (1, causal); those positions are masked anyway
        return 1 if key == "token_type_ids" else super().token_fill(key)

    def generation_inputs(self, processor, images, prompts):
        inputs = super().generation_inputs(processor, images, prompts)
        inputs.pop("labels", None)  # the processor labels every prompt that has token types; generate needs none
        return inputs

    def encode_example(self, processor, image, caption, prompt):
        """The processor's suffix encoding: [image tokens, bos, prefix, \\n] (labels -100,
        token types 0) + [caption, eos] (labels = ids, token types 1)."""
        return dict(self.processor_inputs(processor, [self.build_prompt(processor, prompt)], [image],
                                          suffix=[caption]))
