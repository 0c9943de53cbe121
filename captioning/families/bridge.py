"""The vision-language bridge: a frozen vision backbone (DINOv2; SigLIP/CLIP vision) and a
frozen causal LM (SmolLM2, Gemma-2, ...) joined by trainable gated cross-attention blocks.
Model, config and processor live in ``captioning/bridge/`` and travel with every
checkpoint as remote code, so loading one needs ``trust_remote_code=True`` (never implied:
``--trust-remote-code`` / ``model.trust_remote_code`` must say so).

The prompt is plain text (no image tokens: the LM reads the image through the bridge):
``<bos>{instruction}\\n`` then the caption and the eos token.
"""

from __future__ import annotations

import torch

from captioning.families import register
from captioning.families.base import DEFAULT_PROMPT, IGNORE_INDEX, Family


@register
class BridgeFamily(Family):
    name = "bridge"
    model_types = ("bridge",)
    default_prompt = DEFAULT_PROMPT
    vision_pattern = r"(^|\.)vision_model(\.|$)"
    connector_pattern = r"(^|\.)bridge(\.|$)"
    pads_left = True

    image_options = ("image_longest_edge",)

    def stop_token_ids(self, processor):
        return [self.tokenizer(processor).eos_token_id]  # answer_ids ends every caption with it

    def configure_processor(self, processor, *, image_longest_edge=None, image_splitting=None):
        """``image_longest_edge``: the square side the backbone sees (resize the short
        side to it, then centre crop). DINOv2 interpolates its position embeddings, so any
        multiple of the patch size works; compute grows with its square. No splitting."""
        self.check_image_options(image_longest_edge=image_longest_edge, image_splitting=image_splitting)
        if image_longest_edge is not None:
            ip = processor.image_processor
            side = int(image_longest_edge)
            ip.size = {"shortest_edge": side}
            ip.crop_size = {"height": side, "width": side}

    def build_prompt(self, processor, prompt):
        return processor.build_prompt(prompt)

    def images_arg(self, images):
        return list(images)

    def answer_ids(self, processor, prompt, caption: str) -> torch.Tensor:
        """The supervised ids: the caption, then eos (so generation learns to stop)."""
        tok = self.tokenizer(processor)
        if tok.eos_token_id is None:
            raise ValueError("the bridge's tokenizer has no eos token: captions could never end")
        ids = tok(caption, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return torch.tensor([ids], dtype=torch.long)

    def encode_example(self, processor, image, caption, prompt):
        """Prompt (labels -100) + caption + eos (supervised), pixel values for the bridge.
        Prompt and caption are tokenised apart, exactly as generation sees them."""
        inputs = processor(images=[image], text=[self.build_prompt(processor, prompt)], return_tensors="pt")
        answer = self.answer_ids(processor, prompt, caption)
        input_ids = torch.cat([inputs["input_ids"], answer], dim=1)
        labels = torch.cat([torch.full_like(inputs["input_ids"], IGNORE_INDEX), answer], dim=1)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
                "pixel_values": inputs["pixel_values"]}
