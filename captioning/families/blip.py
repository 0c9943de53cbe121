"""BLIP captioning: Salesforce/blip-image-captioning-base and -large.

BLIP has no chat template: captioning is unconditional, or continues an
optional text prefix ("a photography of"). Its text decoder is BERT-like with
absolute positions, so prompts of different lengths are never left padded in
one batch (the captioning core groups them by length instead).
"""

from __future__ import annotations

import types

import torch

from captioning.families import register
from captioning.families.base import IGNORE_INDEX, Family


@register
class BlipFamily(Family):
    name = "blip"
    model_types = ("blip",)
    default_prompt = None
    vision_pattern = r"(^|\.)vision_model(\.|$)"
    # No connector: the image-text cross-attention lives inside the text decoder's layers, so
    # the default LoRA targets (every language-model linear layer) include it, as they should:
    # they are where the caption reads the image. The prediction head
    # (text_decoder.cls: its transform and the decoder) is the output head, not targeted.
    connector_pattern = None
    usage_template = "blip"
    int8_on_cpu = True  # int8 kept the demo-size BLIP's shapes captions within the gate (BENCHMARKS.md)
    #: left padding would shift BLIP's absolute positions: batch only equal-length prompts
    pads_left = False

    def model_class(self):
        from transformers import BlipForConditionalGeneration

        # AutoModelForImageTextToText maps blip to BlipForConditionalGeneration too;
        # naming it keeps 4.x (where the Auto name differs) on the same class.
        return BlipForConditionalGeneration

    def prepare_model(self, model, processor):
        super().prepare_model(model, processor)
        sdpa_vision_attention(model)

    def stop_token_ids(self, processor):
        return [self.tokenizer(processor).sep_token_id]  # training ends every caption with [SEP]

    def build_prompt(self, processor, prompt):
        return prompt or ""

    def _text_ids(self, processor, text: str) -> torch.Tensor:
        # [CLS] text [SEP]; BLIP's generate swaps [CLS] for bos ([DEC]) and drops [SEP].
        return self.tokenizer(processor)(text, return_tensors="pt")["input_ids"]

    def generation_inputs(self, processor, images, prompts):
        inputs = processor(images=list(images), return_tensors="pt")
        if any(prompts):
            ids = [self._text_ids(processor, p or "") for p in prompts]
            if len({t.shape[1] for t in ids}) != 1:
                raise ValueError("BLIP batches must hold prompts of one token length")
            inputs["input_ids"] = torch.cat(ids)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    def prompt_length(self, processor, prompt):
        """Token length of a prompt: the grouping key for batching."""
        return self._text_ids(processor, prompt or "").shape[1] if prompt else 0

    def new_tokens(self, sequences, inputs):
        # generate() returns bos + prefix + new tokens; the prefix is input_ids minus [SEP]
        start = inputs["input_ids"].shape[1] - 1 if "input_ids" in inputs else 1
        return sequences[:, start:]

    def encode_example(self, processor, image, caption, prompt):
        """[DEC] prefix caption [SEP]: bos at position 0, as generate() starts (the
        processor puts [CLS] there; training on [CLS] would disagree with inference).
        Labels cover the caption and [SEP] only."""
        tok = self.tokenizer(processor)
        text = f"{prompt} {caption}" if prompt else caption
        ids = self._text_ids(processor, text)
        ids[:, 0] = tok.convert_tokens_to_ids(tok.bos_token) if tok.bos_token else ids[:, 0]
        labels = ids.clone()
        n_prefix = 1 + (self._text_ids(processor, prompt).shape[1] - 2 if prompt else 0)
        labels[:, :n_prefix] = IGNORE_INDEX
        pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}


# Written by hand because transformers has no SDPA path for BLIP: its BlipAttention
# (the vision tower's) always runs eager attention (``_supports_sdpa`` is False in 5.x),
# materialising 12 x 577 x 577 scores per image per layer. SDPA computes the same
# function without them (the same greedy tokens; tests/test_families.py checks it), faster
# and in less memory (BENCHMARKS.md, the real-size generation section).
def _sdpa_attention_forward(self, hidden_states, *args, **kwargs):
    """BlipAttention.forward through ``scaled_dot_product_attention``. Returns no attention
    weights; calls that ask for them (or pass a head mask) get the eager forward."""
    if args or kwargs.get("output_attentions") or kwargs.get("head_mask") is not None:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    context = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, dropout_p=self.dropout.p if self.training else 0.0, scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


def sdpa_vision_attention(model) -> int:
    """Route every BlipAttention of ``model`` through SDPA; returns how many were changed
    (modules that already have their own instance-level forward are left alone)."""
    try:
        from transformers.models.blip.modeling_blip import BlipAttention
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, BlipAttention) and "forward" not in module.__dict__:
            module.forward = types.MethodType(_sdpa_attention_forward, module)
            n += 1
    return n
