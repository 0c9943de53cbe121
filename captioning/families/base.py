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

from captioning.errors import UserError

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
    #: prompts of different token lengths may share a batch through left padding
    pads_left: ClassVar[bool] = True
    #: the image-size options :meth:`configure_processor` honours (others are refused, never ignored)
    image_options: ClassVar[tuple[str, ...]] = ()
    #: the forward accepts cached vision + connector outputs in place of pixels
    #: (:meth:`image_features` / :meth:`feature_inputs`; training's data.feature_cache)
    feature_cache: ClassVar[bool] = False
    #: decoder-only: the logits at position t predict the label at t+1 (encoder-decoders: at t)
    shifts_labels: ClassVar[bool] = True
    #: int8 (--quantize int8, captioning.kernels.quantize_int8) kept this family's captions within
    #: the quality gate (BENCHMARKS.md, "int8 serving"), so CPU serving defaults to it (--quantize auto)
    int8_on_cpu: ClassVar[bool] = False
    #: the model card's usage snippet: model_cards/usage/<usage_template>.py.j2
    usage_template: ClassVar[str] = "chat"
    #: default LoRA targets: None, every linear layer of the language model, found in the loaded
    #: model whatever its names (:meth:`lora_targets`, captioning.lora_targets). A family whose
    #: adapter needs something else sets a regex over module paths (for ``re.fullmatch``) here
    #: and says why; none does now.
    lora_target_regex: ClassVar[str | None] = None

    # ------------------------------------------------------------------ loading
    def model_class(self):
        """The Auto class that loads this family's checkpoints."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def load_processor(self, path: str, *, revision: str | None = None, trust_remote_code: bool = False):
        """Load the processor for ``path`` (a local folder or a hub id); image-only where its
        video processor needs torchvision and torchvision is missing (captioning.processors)."""
        from captioning.processors import load_processor

        return load_processor(path, revision=revision, trust_remote_code=trust_remote_code)

    def configure_processor(self, processor, *, image_longest_edge: int | None = None,
                            image_splitting: bool | None = None) -> None:
        """Apply image-size options. Families list what they honour in ``image_options`` and
        override this; an option a family cannot honour is a UserError, never ignored."""
        self.check_image_options(image_longest_edge=image_longest_edge, image_splitting=image_splitting)

    def check_image_options(self, **given) -> None:
        for key, value in given.items():
            if value is not None and key not in self.image_options:
                flag = key.replace("_", "-")
                raise UserError(f"--{flag} (data.{key}): the {self.name} family has no such control; leave it unset")

    def prepare_model(self, model, processor) -> None:
        """Make generation stop where a training caption ends: at the chat template's
        end-of-turn token, or at eos where the template has none (called after loading)."""
        tok = self.tokenizer(processor)
        gc = model.generation_config
        if gc.pad_token_id is None and tok.pad_token_id is not None:
            gc.pad_token_id = tok.pad_token_id
        eos = gc.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        missing = [i for i in self.stop_token_ids(processor) if i not in eos]
        if missing:
            gc.eos_token_id = eos + missing

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

    def _answer_parts(self, processor, prompt: str | None) -> tuple[str, str]:
        """What the chat template writes after the generation prompt, around the answer:
        (before it, after it with trailing whitespace dropped).

        Derived by rendering a conversation with a marker answer, so any chat
        template works without knowing its end-of-turn token by name.
        """
        marker = "\u2063CAPTION\u2063"
        head = self.build_prompt(processor, prompt)
        full = processor.apply_chat_template(self._conversation(prompt, marker))
        if not full.startswith(head) or marker not in full:
            raise ValueError(f"{self.name}: the chat template does not render the answer after the "
                             "generation prompt; this family cannot build training labels for it")
        before, after = full[len(head):].split(marker, 1)
        return before, after.rstrip()

    def answer_text(self, processor, prompt: str | None, caption: str) -> str:
        """The supervised text: what the chat template puts after the prompt for this
        caption, up to and including its end-of-turn token (trailing newlines dropped)."""
        before, after = self._answer_parts(processor, prompt)
        return before + caption + after

    def end_of_turn_id(self, processor) -> int | None:
        """The special token the chat template closes an assistant turn with (Qwen's
        <|im_end|>, Gemma's <end_of_turn>, SmolVLM's <end_of_utterance>), or None when the
        turn ends in plain text (LLaVA-1.5 closes it with a space)."""
        try:
            after = self._answer_parts(processor, None)[1]
        except (ValueError, AttributeError, TypeError):  # no chat template, or one without an answer turn
            return None
        return self._closing_special(processor, after)

    def _closing_special(self, processor, after: str) -> int | None:
        """The special token ``after`` (the template's text after an answer) ends with, if any."""
        tok = self.tokenizer(processor)
        ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
        return ids[-1] if ids and is_special(tok, ids[-1]) else None

    def stop_token_ids(self, processor) -> list[int]:
        """Tokens that end a caption: the end-of-turn token the answer closes with, or eos
        (which :meth:`answer_ids` appends when the template closes with none)."""
        eot = self.end_of_turn_id(processor)
        if eot is not None:
            return [eot]
        eos = self.tokenizer(processor).eos_token_id
        return [] if eos is None else [eos]

    def answer_ids(self, processor, prompt: str | None, caption: str) -> torch.Tensor:
        """The supervised ids ``[1, n]``: the answer text tokenised on its own (exactly the
        ids generation produces after the prompt), ending with a stop token, so a
        fine-tune learns to stop even when the template's turn ends in plain text."""
        tok = self.tokenizer(processor)
        before, after = self._answer_parts(processor, prompt)  # one render serves both uses below
        ids = tok(before + caption + after, add_special_tokens=False)["input_ids"]
        if self._closing_special(processor, after) is None:
            if tok.eos_token_id is None:
                raise ValueError(f"{self.name}: the chat template ends a turn in plain text and the tokenizer "
                                 "has no eos token, so a caption could never end")
            ids = ids + [tok.eos_token_id]
        return torch.tensor([ids], dtype=torch.long)

    # ----------------------------------------------------------- generation IO
    def images_arg(self, images: Sequence) -> list:
        """How a batch of single images is passed to the processor."""
        return [[im] for im in images]

    def processor_inputs(self, processor, texts: Sequence[str], images: Sequence, **kwargs):
        """``processor(text=..., images=...)`` with one image per text, passed nested
        (``[[im], ...]``: a flat list reads as several images of one prompt to Gemma 3 and
        others). A prompt the chat template already starts with bos is tokenised without
        special tokens, so the model never sees bos twice."""
        bos = self.tokenizer(processor).bos_token
        if bos and all(t.startswith(bos) for t in texts):
            kwargs["add_special_tokens"] = False
        return processor(text=list(texts), images=self.images_arg(images), return_tensors="pt", **kwargs)

    def generation_inputs(self, processor, images: Sequence, prompts: Sequence[str | None]):
        """Processor outputs for a batch (left padded, so new tokens line up)."""
        tok = self.tokenizer(processor)
        texts = [self.build_prompt(processor, p) for p in prompts]
        old = tok.padding_side
        tok.padding_side = "left"
        try:
            return self.processor_inputs(processor, texts, images, padding=True)
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
        prompt_inputs = self.processor_inputs(processor, [self.build_prompt(processor, prompt)], [image])
        return self.join(prompt_inputs, self.answer_ids(processor, prompt, caption))

    def token_fill(self, key: str) -> int | None:
        """The value a per-token side tensor (:func:`per_token_keys`) takes over the caption
        and over padding, or None (the default): over the caption it continues the prompt's
        last position, as ``generate`` extends ``token_type_ids`` and Mllama's
        ``cross_attention_mask`` for each new token (the caption attends to the images the
        last prompt token attends to; type ids stay the text value the prompt ends on), and
        padding is 0. A family that needs a fixed value returns it (PaliGemma)."""
        return None

    def join(self, prompt_inputs: dict, answer: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoded prompt (one example) + supervised answer ids: input ids, labels, mask, and
        every per-token side tensor the processor returned, of any rank, extended over the
        answer along dimension 1 (:meth:`token_fill`)."""
        head = prompt_inputs["input_ids"]
        out = {k: v for k, v in prompt_inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
        for key in per_token_keys(prompt_inputs):
            side, fill = out[key], self.token_fill(key)
            shape = (side.shape[0], answer.shape[1], *side.shape[2:])
            tail = side[:, -1:].expand(shape) if fill is None else side.new_full(shape, fill)
            out[key] = torch.cat([side, tail], dim=1)
        ids = torch.cat([head, answer.to(head.dtype)], dim=1)
        out.update(input_ids=ids, attention_mask=torch.ones_like(ids),
                   labels=torch.cat([torch.full_like(head, IGNORE_INDEX), answer.to(head.dtype)], dim=1))
        return out

    def pad_token_id(self, processor) -> int:
        tok = self.tokenizer(processor)
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def pad_values(self, processor) -> dict[str, int]:
        """The right-padding value of each token-level key :meth:`collate` pads."""
        return {"input_ids": self.pad_token_id(processor), "labels": IGNORE_INDEX, "attention_mask": 0}

    def collate(self, processor, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch encoded examples: text and per-token side tensors (any rank) right padded
        along the sequence (labels -100, mask 0, side tensors :meth:`token_fill` or 0); image
        tensors concatenated, zero-padded where crop counts differ."""
        pad_values = self.pad_values(processor)
        for key in per_token_keys(examples[0]):
            fill = self.token_fill(key)
            pad_values.setdefault(key, 0 if fill is None else fill)
        return {key: _cat_padded([ex[key] for ex in examples], pad_values.get(key, 0)) for key in examples[0]}

    # ------------------------------------------------------ cached image features
    def image_features(self, model, pixel_inputs: dict) -> list[torch.Tensor]:
        """Vision tower + connector output per image (families with ``feature_cache``)."""
        raise NotImplementedError(f"the {self.name} family cannot take precomputed image features")

    def feature_inputs(self, inputs: dict) -> dict:
        """A batch with ``image_features`` (cached) turned into the forward's arguments."""
        raise NotImplementedError(f"the {self.name} family cannot take precomputed image features")

    # ----------------------------------------------------------- module groups
    def language_linear_names(self, model) -> list[str]:
        """Full paths of every linear layer of the language model: not the vision tower, the
        connector (:attr:`vision_pattern`, :attr:`connector_pattern`) or the output head."""
        from captioning.lora_targets import language_linear_names

        return language_linear_names(model, self.vision_pattern, self.connector_pattern)

    def lora_targets(self, model) -> str | list[str]:
        """The default LoRA targets for ``model``: :attr:`lora_target_regex` where the family
        sets one, else exactly :meth:`language_linear_names`, as a regex over layer paths
        (peft's ``target_modules``; a list of the full names where no regex matches only them)."""
        if self.lora_target_regex is not None:
            return self.lora_target_regex
        from captioning.lora_targets import exact_regex

        names = self.language_linear_names(model)
        return exact_regex(names, (n for n, _ in model.named_modules())) or names

    def module_names(self, model, pattern: str | None) -> list[str]:
        if not pattern:
            return []
        rx = re.compile(pattern)
        return [n for n, _ in model.named_modules() if n and rx.search(n)]

    def parameter_groups(self, model) -> dict[str, list[str]]:
        """Parameter names split into vision / connector / language (everything else). The
        connector is matched first: some connectors live inside the vision module (Qwen's
        ``visual.merger``)."""
        vis = re.compile(self.vision_pattern)
        con = re.compile(self.connector_pattern) if self.connector_pattern else None
        groups: dict[str, list[str]] = {"vision": [], "connector": [], "language": []}
        for name, _ in model.named_parameters():
            if con is not None and con.search(name):
                groups["connector"].append(name)
            elif vis.search(name):
                groups["vision"].append(name)
            else:
                groups["language"].append(name)
        return groups


def is_special(tok, token_id: int) -> bool:
    """A special token: one the tokenizer names (bos, eos, ...) or an added token marked
    special (chat-template tokens such as <end_of_turn> are often only the latter)."""
    if token_id in tok.all_special_ids:
        return True
    added = getattr(tok, "added_tokens_decoder", {}).get(token_id)
    return bool(added is not None and added.special)


def per_token_keys(encoded: dict) -> list[str]:
    """Keys of side tensors with values per input token: any rank, dimensions 0 and 1 those
    of ``input_ids`` (``token_type_ids``, ``mm_token_type_ids``: [batch, sequence]; Mllama's
    ``cross_attention_mask``: [batch, sequence, images, tiles])."""
    ids = encoded.get("input_ids")
    if ids is None:
        return []
    return [k for k, v in encoded.items()
            if k not in ("input_ids", "attention_mask", "labels") and isinstance(v, torch.Tensor)
            and v.dim() >= 2 and v.shape[:2] == ids.shape]


def _cat_padded(tensors: Sequence[torch.Tensor], value: int = 0) -> torch.Tensor:
    """Concatenate on dim 0, padding the other dims to the largest size with ``value``.

    Token tensors are padded along the sequence (dim 1), and a per-token side tensor of rank 3
    or more also along its trailing dims. Idefics3 uses all-zero crops as padding (it drops
    them), so zeros are the right fill for image tensors whose crop counts differ.
    """
    if all(t.shape[1:] == tensors[0].shape[1:] for t in tensors):
        return torch.cat(list(tensors))
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = []
    for t in tensors:
        padded = t.new_full((t.shape[0], *shape), value)
        padded[(slice(None), *[slice(0, s) for s in t.shape[1:]])] = t
        out.append(padded)
    return torch.cat(out)
