"""The captioning core on tiny random models of every family: save/reload through
the Auto classes, batched == single captions, label masks, module groups."""

import re
import time

import pytest
import torch

from captioning.errors import UserError
from captioning.families import family_names, get_family
from captioning.families.base import IGNORE_INDEX
from captioning.generation import GenerationSettings, caption_images
from captioning.loading import load_captioner

FACTORY_FAMILIES = ["idefics3", "blip"]


@pytest.fixture(scope="module")
def captioners(tiny_models):
    return {fam: load_captioner(tiny_models[fam]) for fam in FACTORY_FAMILIES}


def test_registry_lists_families():
    assert {"idefics3", "blip", "generic"} <= set(family_names())
    with pytest.raises(UserError, match="unknown model family"):
        get_family("nope")


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
def test_auto_classes_reload_identically(tiny_models, fam, shapes_images):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_models[fam]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    cap = load_captioner(path)
    assert cap.family.name == fam
    assert type(model) is type(cap.model)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), cap.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    inputs = cap.family.generation_inputs(processor, shapes_images[:1], [cap.prompt])
    with torch.inference_mode():
        a = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        b = cap.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_blip_vision_attention_runs_sdpa_with_the_eager_result(tiny_models, shapes_images, monkeypatch):
    """BlipFamily routes the vision tower's attention through SDPA (transformers runs it
    eagerly): same outputs, gradients still flow, attention weights still on request."""
    from transformers.models.blip.modeling_blip import BlipAttention

    cap = load_captioner(tiny_models["blip"])
    attn = [m for m in cap.model.modules() if isinstance(m, BlipAttention)]
    assert attn and all("forward" in m.__dict__ for m in attn)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    pixels = cap.processor(images=shapes_images[:3], return_tensors="pt")["pixel_values"]
    vision = cap.model.vision_model
    with torch.inference_mode():
        fast = vision(pixel_values=pixels).last_hidden_state
        assert len(calls) == len(attn)
        own = [m.__dict__.pop("forward") for m in attn]
        try:
            eager = vision(pixel_values=pixels).last_hidden_state
        finally:
            for m, f in zip(attn, own):
                m.forward = f
        assert len(calls) == len(attn)  # the eager run made no SDPA call
        hidden = torch.randn(2, 5, attn[0].embed_dim)
        out, weights = attn[0](hidden, output_attentions=True)  # weights asked for: eager
        assert weights is not None and weights.shape == (2, attn[0].num_heads, 5, 5)
        torch.testing.assert_close(out, attn[0](hidden)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)
    cap.model.train()
    vision(pixel_values=pixels).last_hidden_state.square().mean().backward()
    assert all(m.qkv.weight.grad is not None and m.qkv.weight.grad.abs().sum() > 0 for m in attn)


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
def test_batched_greedy_equals_single(captioners, fam, shapes_images):
    cap = captioners[fam]
    # different prompt lengths in one call: left padding (SmolVLM) or length groups (BLIP)
    prompts = ["Give a concise caption.", "Describe this image.", None, "a picture of", "shows", None]
    settings = GenerationSettings(max_new_tokens=10)
    batched = caption_images(cap, shapes_images, prompts, settings, batch_size=4)
    single = [caption_images(cap, [im], [p], settings, batch_size=1)[0] for im, p in zip(shapes_images, prompts)]
    assert batched == single
    assert all(len(c) == 1 and isinstance(c[0], str) for c in batched)


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
def test_variations_beams_and_sampling(captioners, fam, shapes_images):
    cap = captioners[fam]
    sampled = caption_images(cap, shapes_images[:2], None,
                             GenerationSettings(max_new_tokens=8, do_sample=True, num_captions=3, seed=3,
                                                temperature=1.5))
    again = caption_images(cap, shapes_images[:2], None,
                           GenerationSettings(max_new_tokens=8, do_sample=True, num_captions=3, seed=3,
                                              temperature=1.5))
    assert [len(c) for c in sampled] == [3, 3]
    assert sampled == again  # seeded sampling is reproducible
    assert len(set(sampled[0])) > 1  # variations differ
    beams = caption_images(cap, shapes_images[:2], None, GenerationSettings(max_new_tokens=8, num_captions=2))
    assert [len(c) for c in beams] == [2, 2]


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
def test_caption_has_no_prompt_echo_or_special_tokens(captioners, fam, shapes_images):
    cap = captioners[fam]
    tok = cap.family.tokenizer(cap.processor)
    specials = [t for t in tok.all_special_tokens if t]
    for (c,) in caption_images(cap, shapes_images[:3], None, GenerationSettings(max_new_tokens=12)):
        assert not any(s in c for s in specials)
        assert "Assistant" not in c and "concise" not in c
        assert c == " ".join(c.split())


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
@pytest.mark.parametrize("prompt", [None, "Describe this image."])
def test_only_caption_and_eos_are_supervised(captioners, fam, prompt, shapes_images):
    cap = captioners[fam]
    tok = cap.family.tokenizer(cap.processor)
    caption = "a small red circle above a large blue square"
    ex = cap.family.encode_example(cap.processor, shapes_images[0], caption, prompt or cap.prompt)
    labels, ids = ex["labels"][0], ex["input_ids"][0]
    supervised = labels[labels != IGNORE_INDEX]
    eos = tok.sep_token if fam == "blip" else "<end_of_utterance>"
    expected = f"{caption} {eos}" if fam == "blip" else f"{caption}{eos}"
    assert tok.decode(supervised).strip() == expected
    # supervised ids are the tail of the inputs, and the last one is the end token
    n = len(supervised)
    assert torch.equal(ids[-n:], supervised)
    assert supervised[-1].item() == tok.convert_tokens_to_ids(eos)
    # image tokens and prompt are masked
    if fam == "idefics3":
        image_id = cap.model.config.image_token_id
        assert (ids == image_id).sum() > 0
        assert (labels[ids == image_id] == IGNORE_INDEX).all()
    else:  # BLIP: bos [DEC] at position 0 as generate() starts, never supervised
        assert ids[0].item() == cap.model.config.text_config.bos_token_id
        assert labels[0].item() == IGNORE_INDEX


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
def test_collate_pads_text_and_masks_padding(captioners, fam, shapes_images):
    cap = captioners[fam]
    exs = [cap.family.encode_example(cap.processor, im, c, cap.prompt)
           for im, c in zip(shapes_images[:2], ["a star", "a small red circle above a large blue square"])]
    batch = cap.family.collate(cap.processor, exs)
    short = exs[0]["input_ids"].shape[1]
    assert batch["input_ids"].shape[0] == 2
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, short:] == 0).all()
    loss = cap.model(**batch).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("fam", FACTORY_FAMILIES)
def test_lora_targets_are_language_model_only(captioners, fam):
    cap = captioners[fam]
    targets = cap.family.module_names(cap.model, cap.family.lora_targets(cap.model))
    assert targets, "default LoRA targets match nothing"
    vision = re.compile(cap.family.vision_pattern)
    assert not any(vision.search(t) for t in targets)
    mods = dict(cap.model.named_modules())
    assert all(isinstance(mods[t], torch.nn.Linear) for t in targets)
    groups = cap.family.parameter_groups(cap.model)
    assert groups["vision"] and groups["language"]
    if fam == "idefics3":
        assert groups["connector"]
        assert any("mlp" in t for t in targets) and any("self_attn" in t for t in targets)


def test_offline_hub_id_fails_fast_with_hint():
    start = time.monotonic()
    with pytest.raises(UserError, match="local"):
        load_captioner("HuggingFaceTB/SmolVLM-256M-Instruct")
    assert time.monotonic() - start < 5


def test_missing_local_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_captioner(str(tmp_path / "nope" / "model"))
