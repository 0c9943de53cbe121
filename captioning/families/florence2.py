"""Florence-2 (the transformers-native checkpoints: florence-community/Florence-2-base,
-large and their -ft variants): an encoder-decoder. The task prompt ("<CAPTION>", which
the processor rewrites as "What does the image describe?") goes to the encoder with the
image; the caption is the decoder's output, so it is decoded whole (no prompt echo) and
supervised without the one-token shift of decoder-only models. No chat template."""

from __future__ import annotations

from captioning.families import register
from captioning.families.base import Family


@register
class Florence2Family(Family):
    name = "florence2"
    model_types = ("florence2",)
    default_prompt = "<CAPTION>"
    vision_pattern = r"(^|\.)vision_tower(\.|$)"
    connector_pattern = r"(^|\.)(multi_modal_projector|image_projection|image_pos_embed|visual_temporal_embed)(\.|$)"
    usage_template = "seq2seq"
    shifts_labels = False

    def build_prompt(self, processor, prompt):
        return prompt or self.default_prompt

    def images_arg(self, images):
        return list(images)

    def stop_token_ids(self, processor):
        return [self.tokenizer(processor).eos_token_id]  # BART closes every caption with </s>

    def generation_inputs(self, processor, images, prompts):
        # BART's encoder has absolute positions: right padding keeps every prompt at position 0
        # (the decoder's output does not line up with the encoder's, so nothing needs left padding)
        return self.processor_inputs(processor, [self.build_prompt(processor, p) for p in prompts], images,
                                     padding=True)

    def new_tokens(self, sequences, inputs):
        return sequences  # the decoder's output alone: decoder start token, <s>, caption, </s>

    def encode_example(self, processor, image, caption, prompt):
        """Encoder: image + task prompt. Labels: ``<s> caption </s>``, what the decoder emits
        after its start token; decoder inputs: the start token + the labels but the last (given
        explicitly, so a forward without labels sees the same decoder inputs)."""
        import torch

        out = dict(self.processor_inputs(processor, [self.build_prompt(processor, prompt)], [image]))
        labels = self.tokenizer(processor)(caption, return_tensors="pt")["input_ids"]
        start = torch.full_like(labels[:, :1], self._decoder_start(processor))
        out.update(labels=labels, decoder_input_ids=torch.cat([start, labels[:, :-1]], dim=1))
        return out

    def _decoder_start(self, processor) -> int:
        # BART (and Florence-2) start decoding with </s>
        return self.tokenizer(processor).eos_token_id

    def pad_values(self, processor):
        return {**super().pad_values(processor), "decoder_input_ids": self.pad_token_id(processor)}
