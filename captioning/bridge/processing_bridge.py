"""Processor of the vision-language bridge: the backbone's image processor, the language
model's tokenizer, and the prompt format.

The image never appears in the text (the LM reads it through cross-attention), so a
prompt is plain text: ``prompt_template`` with ``{bos}`` (the tokenizer's bos token, or
nothing) and ``{prompt}`` (the instruction); with no instruction it is just ``{bos}``.
Training appends the caption and the eos token after it. Text is tokenised with
``add_special_tokens=False``: the template already holds the bos token.

    processor = AutoProcessor.from_pretrained(folder_or_repo, trust_remote_code=True)
    inputs = processor(images=[img1, img2], return_tensors="pt")   # default prompt for each
    inputs = processor(images=[img], text=[processor.build_prompt("Describe it.")], return_tensors="pt")

This file is copied next to the weights by ``save_pretrained``: it imports only
transformers and runs under transformers 5 and 4.57.
"""

from __future__ import annotations

import json

import transformers
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

_TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
DEFAULT_PROMPT = "Give a concise caption."
DEFAULT_TEMPLATE = "{bos}{prompt}\n"


def _chat_template(prompt_template: str, bos: str | None, eos: str | None) -> str:
    """A chat template that renders a one-turn conversation exactly as build_prompt does
    (plus the answer and eos for an assistant turn), so code written for chat-template
    processors (apply_chat_template + processor(text=..., images=...)) works unchanged."""
    before, after = prompt_template.format(bos=bos or "", prompt="\0").split("\0")
    lit = json.dumps  # a JSON string is a valid Jinja string literal
    return (
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{% set ns = namespace(text='') %}"
        "{% if message['content'] is string %}{% set ns.text = message['content'] %}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{% set ns.text = ns.text + part['text'] %}"
        "{% endif %}{% endfor %}{% endif %}"
        "{% if ns.text %}{{ " + lit(before) + " }}{{ ns.text }}{{ " + lit(after) + " }}{% else %}{{ "
        + lit(bos or "") + " }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{% endif %}{{ " + lit(eos or "") + " }}{% endif %}{% endfor %}"
    )


def _flat_images(images) -> list:
    """One image, a list, or a list of one-image lists (the nested form other processors take)."""
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for im in images:
        if isinstance(im, (list, tuple)):
            if len(im) != 1:
                raise ValueError("the bridge reads one image per text sequence")
            flat.append(im[0])
        else:
            flat.append(im)
    return flat


class BridgeProcessor(ProcessorMixin):
    """Image processor + tokenizer + prompt format for BridgeForConditionalGeneration."""

    attributes = ["image_processor", "tokenizer"]
    if _TRANSFORMERS_4:  # 4.x finds sub-processors through these; 5.x reads __init__ (and warns about them)
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"
    _auto_class = "AutoProcessor"

    def __init__(self, image_processor=None, tokenizer=None, prompt_template: str = DEFAULT_TEMPLATE,
                 default_prompt: str | None = DEFAULT_PROMPT, **kwargs):
        if "{prompt}" not in prompt_template:
            raise ValueError("prompt_template must contain {prompt}")
        self.prompt_template = prompt_template
        self.default_prompt = default_prompt
        if kwargs.get("chat_template") is None and tokenizer is not None:
            kwargs["chat_template"] = _chat_template(prompt_template, tokenizer.bos_token, tokenizer.eos_token)
        super().__init__(image_processor, tokenizer, **kwargs)

    def build_prompt(self, prompt: str | None = None) -> str:
        """The text before the caption for ``prompt`` (None or "": no instruction)."""
        bos = self.tokenizer.bos_token or ""
        if not prompt:
            return bos
        return self.prompt_template.format(bos=bos, prompt=prompt)

    def __call__(self, images=None, text=None, padding=False, truncation=None, max_length=None,
                 return_tensors=None, **kwargs) -> BatchFeature:
        """``text``: prompt strings already formatted (see build_prompt); None means the
        default prompt for every image. Returns input_ids, attention_mask and, with
        images, pixel_values (one image per text sequence)."""
        images = _flat_images(images) if images is not None else None
        if text is None:
            text = [self.build_prompt(self.default_prompt)] * (len(images) if images else 1)
        elif isinstance(text, str):
            text = [text]
        if images is not None and len(images) != len(text):
            raise ValueError(f"{len(images)} images for {len(text)} texts: pass one image per text")
        data = dict(self.tokenizer(list(text), add_special_tokens=False, padding=padding, truncation=truncation,
                                   max_length=max_length, return_tensors=return_tensors))
        data.pop("token_type_ids", None)  # causal LMs take none; generate() rejects them
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    # ---------------------------------------------------------------- building
    @classmethod
    def from_vision_text_pretrained(cls, vision_model_name_or_path: str, text_model_name_or_path: str, *,
                                    revision=None, **kwargs) -> BridgeProcessor:
        """The backbone's image processor + the LM's tokenizer (``kwargs``: prompt_template, default_prompt)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        image_processor = AutoImageProcessor.from_pretrained(vision_model_name_or_path, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path, revision=revision)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


__all__ = ["BridgeProcessor"]
