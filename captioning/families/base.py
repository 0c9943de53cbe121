"""The Family interface, with the chat-template behaviour most instruct VLMs share.

A family answers, for one architecture: which transformers classes load it,
how a captioning request becomes model inputs (and back), how a training
example (image, caption) becomes input ids + labels, and which modules are the
vision tower, the connector, and the default LoRA targets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import torch

DEFAULT_PROMPT = "Give a concise caption."
IGNORE_INDEX = -100  # the label value CrossEntropyLoss (and transformers) skips

_WS = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Collapse whitespace and strip: what every family returns as a caption."""
    return _WS.sub(" ", text).strip()


class Family:
    """Base class. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    #: config.model_type values this family claims
    model_types: ClassVar[tuple[str, ...]] = ()
    #: instruction used when the caller gives none (None: unconditional captioning)
    default_prompt: ClassVar[str | None] = DEFAULT_PROMPT
    #: regexes over module paths (``named_modules()`` names), matched with re.search
    vision_pattern: ClassVar[str] = r"(^|\.)(vision_model|vision_tower|visual)(\.|$)"
    connector_pattern: ClassVar[str | None] = r"(^|\.)(connector|multi_modal_projector|merger)(\.|$)"
    #: default LoRA targets: the language model's attention and MLP projections only.
    #: A bare name list (q_proj, ...) would also wrap the vision tower's layers.
    #: prompts of different token lengths may share a batch through left padding
    pads_left: ClassVar[bool] = True
    lora_target_regex: ClassVar[str] = (
        r".*(language_model|text_model)\.(.*\.)?layers\.\d+\."
        r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    )

    # ------------------------------------------------------------------ loading
    def model_class(self):
        """The Auto class that loads this family's checkpoints."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def load_processor(self, path: str, *, revision: str | None = None, trust_remote_code: bool = False):
        """Load the processor for ``path`` (a local folder or a hub id)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)

    def configure_processor(self, processor, *, image_longest_edge: int | None = None,
                            image_splitting: bool | None = None) -> None:
        """Apply image-size options; families without such options ignore them."""

    def prepare_model(self, model, processor) -> None:
        """Make generation stop where a caption ends (called after loading)."""
        tok = self.tokenizer(processor)
        gc = model.generation_config
        if gc.pad_token_id is None and tok.pad_token_id is not None:
            gc.pad_token_id = tok.pad_token_id

    # ------------------------------------------------------------ text helpers
    @staticmethod
    def tokenizer(processor):
        return getattr(processor, "tokenizer", processor)

    def build_prompt(self, processor, prompt: str | None) -> str:
        """The text the model sees before the caption (chat template, one image)."""
        return processor.apply_chat_template(self._conversation(prompt), add_generation_prompt=True)

    def _conversation(self, prompt: str | None, answer: str | None = None) -> list[dict]:
        content = [{"type": "image"}]
        if prompt:
            content.append({"type": "text", "text": prompt})
        conv = [{"role": "user", "content": content}]
        if answer is not None:
            conv.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return conv

    def answer_text(self, processor, prompt: str | None, caption: str) -> str:
        """The supervised text: what the chat template puts after the prompt for this
        caption, up to and including the end-of-turn token (trailing newlines dropped).

        Derived by rendering a conversation with a marker answer, so any chat
        template works without knowing its end-of-turn token by name.
        """
        marker = "\u2063CAPTION\u2063"
        head = self.build_prompt(processor, prompt)
        full = processor.apply_chat_template(self._conversation(prompt, marker))
        if not full.startswith(head) or marker not in full:
            raise ValueError(f"{self.name}: the chat template does not render the answer after the "
                             "generation prompt; this family cannot build training labels for it")
        answer = full[len(head):]
        before, after = answer.split(marker, 1)
        return before + caption + after.rstrip()

    # ----------------------------------------------------------- generation IO
    def images_arg(self, images: Sequence) -> list:
        """How a batch of single images is passed to the processor."""
        return [[im] for im in images]

    def generation_inputs(self, processor, images: Sequence, prompts: Sequence[str | None]):
        """Processor outputs for a batch (left padded, so new tokens line up)."""
        tok = self.tokenizer(processor)
        texts = [self.build_prompt(processor, p) for p in prompts]
        old = tok.padding_side
        tok.padding_side = "left"
        try:
            return processor(text=texts, images=self.images_arg(images), padding=True, return_tensors="pt")
        finally:
            tok.padding_side = old

    def prompt_length(self, processor, prompt: str | None) -> int:
        """Grouping key for families that cannot left pad (0 when padding is fine)."""
        return 0

    def generate(self, model, inputs, **kwargs) -> torch.Tensor:
        return model.generate(**inputs, **kwargs)

    def new_tokens(self, sequences: torch.Tensor, inputs) -> torch.Tensor:
        """The generated part of ``sequences`` (drops the echoed prompt)."""
        return sequences[:, inputs["input_ids"].shape[1]:]

    def decode(self, processor, sequences: torch.Tensor, inputs) -> list[str]:
        """Generated ids -> captions: no prompt echo, no special tokens, clean whitespace."""
        texts = self.tokenizer(processor).batch_decode(self.new_tokens(sequences, inputs), skip_special_tokens=True)
        return [normalize_caption(t) for t in texts]

    # --------------------------------------------------------------- training
    def encode_example(self, processor, image, caption: str, prompt: str | None) -> dict[str, torch.Tensor]:
        """One training example: prompt + image tokens (labels -100), then the
        caption and the end-of-turn token (the only supervised labels).

        The prompt and the answer are tokenised separately and concatenated so the
        model is trained on exactly the ids it sees at generation time.
        """
        tok = self.tokenizer(processor)
        prompt_inputs = processor(text=[self.build_prompt(processor, prompt)], images=self.images_arg([image]),
                                  return_tensors="pt")
        answer_ids = tok(self.answer_text(processor, prompt, caption), add_special_tokens=False,
                         return_tensors="pt")["input_ids"]
        input_ids = torch.cat([prompt_inputs["input_ids"], answer_ids], dim=1)
        labels = torch.cat([torch.full_like(prompt_inputs["input_ids"], IGNORE_INDEX), answer_ids], dim=1)
        out = {k: v for k, v in prompt_inputs.items() if k not in ("input_ids", "attention_mask")}
        out.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)
        return out

    def pad_token_id(self, processor) -> int:
        tok = self.tokenizer(processor)
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def collate(self, processor, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch encoded examples: text right padded (labels -100, mask 0); image
        tensors concatenated, zero-padded where crop counts differ."""
        pad_values = {"input_ids": self.pad_token_id(processor), "labels": IGNORE_INDEX, "attention_mask": 0}
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            tensors = [ex[key] for ex in examples]
            if key in pad_values:
                width = max(t.shape[1] for t in tensors)
                batch[key] = torch.cat([
                    torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad_values[key]) for t in tensors
                ])
            else:
                batch[key] = _cat_padded(tensors)
        return batch

    # ----------------------------------------------------------- module groups
    def module_names(self, model, pattern: str | None) -> list[str]:
        if not pattern:
            return []
        rx = re.compile(pattern)
        return [n for n, _ in model.named_modules() if n and rx.search(n)]

    def parameter_groups(self, model) -> dict[str, list[str]]:
        """Parameter names split into vision / connector / language (everything else)."""
        vis = re.compile(self.vision_pattern)
        con = re.compile(self.connector_pattern) if self.connector_pattern else None
        groups: dict[str, list[str]] = {"vision": [], "connector": [], "language": []}
        for name, _ in model.named_parameters():
            if vis.search(name):
                groups["vision"].append(name)
            elif con is not None and con.search(name):
                groups["connector"].append(name)
            else:
                groups["language"].append(name)
        return groups


def _cat_padded(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, zero-padding the other dims to the largest size.

    Idefics3 uses all-zero crops as padding (it drops them), so zeros are the
    right fill for image tensors whose crop counts differ between examples.
    """
    if all(t.shape[1:] == tensors[0].shape[1:] for t in tensors):
        return torch.cat(list(tensors))
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = []
    for t in tensors:
        padded = t.new_zeros((t.shape[0], *shape))
        padded[(slice(None), *[slice(0, s) for s in t.shape[1:]])] = t
        out.append(padded)
    return torch.cat(out)
