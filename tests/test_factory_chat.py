"""The tiny random builders of synthetic/factory_chat.py: each builds, saves, reloads through the
Auto classes, trains one step's worth (finite loss) and generates."""

from __future__ import annotations

import math

import pytest

from captioning.errors import UserError
from synthetic.factory_chat import BUILDERS

CHAT = ("gemma3", "llava", "idefics2")
CAPTION = "a red square"
CONV = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Give a concise caption."}]}]
# image tokens per 64 px image, and the config field holding the image token id
IMAGE_TOKENS = {"gemma3": 4, "llava": 16, "idefics2": 4, "paligemma": 16, "florence2": 5}


def _image(colour=(200, 30, 30)):
    from PIL import Image

    return Image.new("RGB", (64, 64), colour)


def _image_token_id(config) -> int:
    for name in ("image_token_id", "image_token_index"):
        if getattr(config, name, None) is not None:
            return getattr(config, name)
    raise AssertionError("no image token id in the config")


def _inputs(arch: str, processor, *, with_caption: bool):
    """Model inputs (and labels when ``with_caption``) as the toolkit builds them for ``arch``."""
    import torch

    img = _image()
    if arch in CHAT:
        prompt = processor.apply_chat_template(CONV, add_generation_prompt=True)
        if not with_caption:
            return processor(text=[prompt], images=[[img]], return_tensors="pt"), None
        answer = CONV + [{"role": "assistant", "content": [{"type": "text", "text": CAPTION}]}]
        full = processor.apply_chat_template(answer)
        assert full.startswith(prompt)
        inputs = processor(text=[full], images=[[img]], return_tensors="pt")
        n_prompt = processor(text=[prompt], images=[[img]], return_tensors="pt")["input_ids"].shape[1]
        labels = inputs["input_ids"].clone()
        labels[:, :n_prompt] = -100
        return inputs, labels
    if arch == "paligemma":
        if not with_caption:
            return processor(text=["caption en"], images=[img], return_tensors="pt"), None
        inputs = processor(text=["caption en"], images=[img], suffix=[CAPTION], return_tensors="pt")
        labels = inputs.pop("labels")
        # the suffix (caption + <eos>) has token_type_ids 1 and is the only part labelled
        assert torch.equal(labels != -100, inputs["token_type_ids"] == 1)
        return inputs, labels
    inputs = processor(text=["<CAPTION>"], images=[img], return_tensors="pt")  # florence2
    labels = processor.tokenizer([CAPTION], return_tensors="pt")["input_ids"] if with_caption else None
    return inputs, labels


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_build_save_reload_train_generate(arch, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    model, processor = BUILDERS[arch]("tiny", tmp_path / "build")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    size = sum(f.stat().st_size for f in (tmp_path / "model").iterdir())
    assert size < 5e6

    config = AutoConfig.from_pretrained(tmp_path / "model")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    tok = processor.tokenizer
    assert config.model_type == arch
    assert config.get_text_config().vocab_size >= len(tok)
    image_token = _image_token_id(config)
    assert tok.convert_ids_to_tokens(image_token) == processor.image_token or arch == "gemma3"

    inputs, labels = _inputs(arch, processor, with_caption=True)
    assert (inputs["input_ids"] == image_token).sum().item() == IMAGE_TOKENS[arch]
    model.train()
    loss = model(**inputs, labels=labels).loss
    assert math.isfinite(loss.item())

    model.eval()
    inputs, _ = _inputs(arch, processor, with_caption=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    if arch == "florence2":  # encoder-decoder: only decoder ids come back, decoder_start (</s>) first
        assert out[0, 0].item() == tok.eos_token_id == config.get_text_config().decoder_start_token_id
        assert 2 <= out.shape[1] <= 4
    else:
        assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 3
        assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("arch", CHAT)
def test_chat_batch_of_two_nested(arch, tmp_path):
    _, processor = BUILDERS[arch]("tiny", tmp_path)
    prompt = processor.apply_chat_template(CONV, add_generation_prompt=True)
    inputs = processor(text=[prompt, prompt], images=[[_image()], [_image((30, 30, 200))]], return_tensors="pt")
    assert inputs["input_ids"].shape[0] == 2 and inputs["pixel_values"].shape[0] == 2


def test_gemma3_template_and_special_ids(tmp_path):
    model, processor = BUILDERS["gemma3"]("tiny", tmp_path)
    tok = processor.tokenizer
    prompt = processor.apply_chat_template(CONV, add_generation_prompt=True)
    assert prompt == ("<bos><start_of_turn>user\n<start_of_image>Give a concise caption.<end_of_turn>\n"
                      "<start_of_turn>model\n")
    ids = processor(text=[prompt], images=[[_image()]])["input_ids"][0]
    assert ids[:2] == [tok.bos_token_id] * 2  # published quirk: the template's <bos> plus the tokenizer's
    assert model.generation_config.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    assert model.config.boi_token_id == tok.convert_tokens_to_ids("<start_of_image>")
    assert model.config.eoi_token_id == tok.convert_tokens_to_ids("<end_of_image>")


def test_llava_and_idefics2_templates(tmp_path):
    answer = CONV + [{"role": "assistant", "content": [{"type": "text", "text": CAPTION}]}]
    _, llava = BUILDERS["llava"]("tiny", tmp_path)
    assert llava.apply_chat_template(answer) == "USER: <image>\nGive a concise caption. ASSISTANT: a red square "
    _, idefics2 = BUILDERS["idefics2"]("tiny", tmp_path)
    assert idefics2.apply_chat_template(answer) == (
        "User:<image>Give a concise caption.<end_of_utterance>\nAssistant: a red square<end_of_utterance>\n")


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_only_tiny(arch, tmp_path):
    with pytest.raises(UserError, match=f"--size demo: the factory builds {arch} at tiny size only"):
        BUILDERS[arch]("demo", tmp_path)
