"""The bridge family (frozen backbone + frozen LM + gated cross-attention) on tiny random
models: Auto-class save/reload with trust_remote_code, generation through GenerationMixin
(KV cache, batches, beams, sampling), masks, the zero-gate identity, what trains."""

import ast
import copy
import json

import pytest
import torch

from captioning.errors import UserError
from captioning.families import get_family
from captioning.families.base import IGNORE_INDEX
from captioning.generation import GenerationSettings, caption_images
from captioning.loading import load_captioner
from synthetic.factory import build_model, build_random_model, count_parameters
from tests.learning import bridge_steps, open_gates


@pytest.fixture(scope="module")
def bridge_dir(tmp_path_factory):
    """A tiny bridge with open gates, saved as a release would be."""
    model, processor = build_model("bridge", "tiny", seed=0)
    open_gates(model)
    out = tmp_path_factory.mktemp("bridge") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cap(bridge_dir):
    return load_captioner(bridge_dir, trust_remote_code=True)


def _batch(cap, images, prompts):
    return cap.family.generation_inputs(cap.processor, images, prompts)


# ------------------------------------------------------------------ save / load
def test_checkpoint_is_self_contained_with_auto_map(bridge_dir):
    files = {p.name for p in bridge_dir.iterdir()}
    assert {"configuration_bridge.py", "modeling_bridge.py", "processing_bridge.py", "model.safetensors",
            "config.json", "processor_config.json", "tokenizer.json", "generation_config.json"} <= files
    auto_map = json.loads((bridge_dir / "config.json").read_text())["auto_map"]
    for key in ("AutoConfig", "AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoProcessor"):
        assert key in auto_map
    # the copied code imports only the standard library, torch, transformers and itself
    allowed = {"__future__", "copy", "json", "math", "threading", "torch", "transformers"}
    for name in ("configuration_bridge.py", "modeling_bridge.py", "processing_bridge.py"):
        for node in ast.walk(ast.parse((bridge_dir / name).read_text())):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= allowed, (name, ast.dump(node))
            elif isinstance(node, ast.ImportFrom) and not node.level:
                assert node.module.split(".")[0] in allowed, (name, node.module)


def test_remote_code_needs_the_explicit_flag(bridge_dir):
    with pytest.raises(UserError, match="trust-remote-code"):
        load_captioner(bridge_dir)


def test_auto_classes_reload_identically(bridge_dir, cap, shapes_images):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(bridge_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(bridge_dir, trust_remote_code=True)
    assert type(model).__name__ == "BridgeForConditionalGeneration" and cap.family.name == "bridge"
    a, b = model.state_dict(), cap.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = _batch(cap, shapes_images[:2], [cap.prompt] * 2)
    assert all(torch.equal(v, processor(images=shapes_images[:2], padding=True, return_tensors="pt")[k])
               for k, v in inputs.items())  # the default prompt, as the family builds it
    with torch.inference_mode():
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False),
                           cap.model.generate(**inputs, max_new_tokens=6, do_sample=False))
    # tied embeddings survive the round trip (the tiny LM ties them, as Gemma-2 does)
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()


# ------------------------------------------------------------------ generation
def test_batched_greedy_equals_single(cap, shapes_images):
    prompts = ["Give a concise caption.", "Describe this image.", None, "What is it?", "shows", None]
    settings = GenerationSettings(max_new_tokens=10)
    batched = caption_images(cap, shapes_images, prompts, settings, batch_size=4)
    single = [caption_images(cap, [im], [p], settings, batch_size=1)[0] for im, p in zip(shapes_images, prompts)]
    assert batched == single
    assert len({c[0] for c in batched}) > 1  # the image (and prompt) matter


def test_kv_cache_generate_equals_no_cache(cap, shapes_images):
    inputs = _batch(cap, shapes_images[:3], [cap.prompt, "Describe this image.", None])
    with torch.inference_mode():
        cached = cap.model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
        plain = cap.model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_image_context_is_computed_once_per_generate(cap, shapes_images):
    calls = []
    handle = cap.model.vision_model.register_forward_hook(lambda m, a, o: calls.append(a))
    try:
        # one batch, one generate call
        caption_images(cap, shapes_images[:2], None, GenerationSettings(max_new_tokens=6, num_beams=3), batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_beams_and_sampling(cap, shapes_images):
    beams = caption_images(cap, shapes_images[:2], None, GenerationSettings(max_new_tokens=8, num_captions=3))
    assert [len(c) for c in beams] == [3, 3]
    s = GenerationSettings(max_new_tokens=8, do_sample=True, num_captions=3, seed=3, temperature=1.5)
    sampled = caption_images(cap, shapes_images[:2], None, s)
    assert sampled == caption_images(cap, shapes_images[:2], None, s)
    assert len(set(sampled[0])) > 1
    # beam rows read their own image: a 2-image beam batch equals each image alone
    one = GenerationSettings(max_new_tokens=8, num_beams=3)
    assert caption_images(cap, shapes_images[:2], None, one, batch_size=2) == [
        caption_images(cap, [im], None, one, batch_size=1)[0] for im in shapes_images[:2]]


# ------------------------------------------------------------------ masks and gates
def test_causal_mask_later_tokens_do_not_change_earlier_logits(cap, shapes_images):
    ex = cap.family.encode_example(cap.processor, shapes_images[0], "a small red circle above a blue square",
                                   cap.prompt)
    ids = ex["input_ids"].clone()
    changed = ids.clone()
    changed[0, -3] = (changed[0, -3] + 7) % cap.model.config.text_config.vocab_size
    with torch.inference_mode():
        a = cap.model(input_ids=ids, pixel_values=ex["pixel_values"]).logits
        b = cap.model(input_ids=changed, pixel_values=ex["pixel_values"]).logits
    assert torch.equal(a[0, :-3], b[0, :-3])
    assert not torch.allclose(a[0, -3:], b[0, -3:])


def test_padding_is_masked_in_attention_and_loss(cap, shapes_images):
    exs = [cap.family.encode_example(cap.processor, im, c, cap.prompt)
           for im, c in zip(shapes_images[:2], ["a star", "a small red circle above a large blue square"])]
    batch = cap.family.collate(cap.processor, exs)
    short = exs[0]["input_ids"].shape[1]
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, short:] == 0).all()
    with torch.inference_mode():
        padded = cap.model(**batch).logits[0, :short]
        alone = cap.model(**exs[0]).logits[0]
        assert torch.allclose(padded, alone, atol=1e-5)
        losses = [cap.model(**e).loss for e in exs]
        n = [(e["labels"][0, 1:] != IGNORE_INDEX).sum() for e in exs]
        mean = sum(loss * k for loss, k in zip(losses, n)) / sum(n)
        assert torch.allclose(cap.model(**batch).loss, mean, atol=1e-5)


def test_training_example_is_prompt_then_caption_then_eos(cap, shapes_images):
    tok = cap.family.tokenizer(cap.processor)
    caption = "two shapes: a red circle and a blue square"
    ex = cap.family.encode_example(cap.processor, shapes_images[0], caption, cap.prompt)
    ids, labels = ex["input_ids"][0], ex["labels"][0]
    supervised = labels[labels != IGNORE_INDEX]
    assert tok.decode(supervised) == caption + tok.eos_token
    assert torch.equal(ids[-len(supervised):], supervised)
    prompt_ids = ids[:len(ids) - len(supervised)]
    assert tok.decode(prompt_ids) == cap.processor.build_prompt(cap.prompt)
    assert ids[0].item() == tok.bos_token_id
    assert ex["pixel_values"].shape == (1, 3, 48, 48)


def test_image_size_option_changes_the_backbone_input(cap, shapes_images):
    processor = copy.deepcopy(cap.processor)
    with pytest.raises(UserError, match="image-splitting.*no such control"):  # refused, never silently ignored
        cap.family.configure_processor(processor, image_splitting=True)
    cap.family.configure_processor(processor, image_longest_edge=64)
    inputs = cap.family.generation_inputs(processor, shapes_images[:1], [cap.prompt])
    assert inputs["pixel_values"].shape[-2:] == (64, 64)
    with torch.inference_mode():  # DINOv2 interpolates its position embeddings: 8x8 patches instead of 6x6
        assert cap.model.get_image_features(inputs["pixel_values"]).shape[1] == 1 + 8 * 8
        assert torch.isfinite(cap.model(**inputs).logits).all()


def test_untrained_bridge_reproduces_the_bare_language_model(shapes_images):
    model, processor = build_model("bridge", "tiny", seed=0)
    model.eval()
    fam = get_family("bridge")
    assert all(not p.detach().any() for n, p in model.bridge.named_parameters() if n.endswith("_gate"))
    ex = fam.encode_example(processor, shapes_images[0], "a red star", fam.default_prompt)
    with torch.inference_mode():
        with_image = model(input_ids=ex["input_ids"], pixel_values=ex["pixel_values"]).logits
        bare = model.language_model(input_ids=ex["input_ids"]).logits
    assert torch.equal(with_image, bare)


# ------------------------------------------------------------------ training
def test_only_bridge_parameters_change_in_training(cap, shapes_images):
    """3 AdamW steps (lr 1e-2) on one batch lower the loss and move only the bridge. Measured
    by tests/learning.py (bridge_few_steps, 5 seeds x 1 and 2 threads): 5.93-6.02 -> 5.60-5.79,
    a drop of 0.20-0.33, identical for both thread counts; the assertion needs any drop."""
    model = copy.deepcopy(cap.model).train()
    fam, proc = cap.family, cap.processor
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("bridge.") for n in trainable)
    assert set(fam.parameter_groups(model)["connector"]) == trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = bridge_steps(model, fam, proc, shapes_images[:3], cap.prompt)
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".blocks." in n for n in changed) and any(".projector." in n for n in changed)


def test_lora_on_the_language_model_keeps_the_bridge_in_the_loop(cap, shapes_images):
    """LoRA option: PEFT swaps `bridge` for a trained copy (modules_to_save); the decoder
    hooks must run that copy, not the original."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(cap.model)
    targets = cap.family.language_linear_names(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=cap.family.lora_targets(model),
                                                  modules_to_save=["bridge"]))
    assert targets and all(t.startswith("language_model.") for t in targets)
    inputs = _batch(cap, shapes_images[:1], [cap.prompt])
    with torch.inference_mode():
        before = peft_model(**inputs).logits
        for blk in model.bridge.modules_to_save["default"].blocks:
            blk.attn_gate.zero_()
            blk.ffn_gate.zero_()
        after = peft_model(**inputs).logits
        bare = model.language_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert not torch.allclose(before, after)
    assert torch.allclose(after, bare, atol=1e-6)
    with torch.inference_mode():  # generate goes through PeftModel to the bridge's own generate
        out = peft_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_lora_plus_bridge_merges_into_one_model(cap, shapes_images, tmp_path):
    """What `release push --merge` does to a LoRA bridge run: merge_and_unload folds the
    adapter into the LM and the trained bridge copy back into `bridge`."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = get_peft_model(copy.deepcopy(cap.model), LoraConfig(
        r=4, init_lora_weights=False, target_modules=cap.family.lora_targets(cap.model), modules_to_save=["bridge"]))
    with torch.no_grad():
        for blk in model.base_model.model.bridge.modules_to_save["default"].blocks:
            blk.attn_gate.mul_(-1)  # the trained copy differs from the original bridge
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(cap.model), tmp_path / "adapter").eval()
    inputs = _batch(cap, shapes_images[:2], [cap.prompt, None])
    with torch.inference_mode():
        adapter_logits = reloaded(**inputs).logits
        merged = reloaded.merge_and_unload()
        assert torch.allclose(merged(**inputs).logits, adapter_logits, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    with torch.inference_mode():
        assert torch.allclose(again(**inputs).logits, adapter_logits, atol=1e-5)
        assert not torch.allclose(cap.model(**inputs).logits, adapter_logits, atol=1e-3)


def test_gradient_checkpointing_gives_the_same_gradients(cap, shapes_images):
    fam, proc = cap.family, cap.processor
    batch = fam.collate(proc, [fam.encode_example(proc, im, c, cap.prompt)
                               for im, c in zip(shapes_images[:2], ["a red circle", "a blue star above a cross"])])
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(cap.model).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(grads[0][n] is not None and torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_concurrent_forwards_read_their_own_images(cap, shapes_images):
    """The image context is per thread: two threads sharing one model never mix images."""
    import threading

    inputs = [_batch(cap, [im], [cap.prompt]) for im in shapes_images[:2]]
    with torch.inference_mode():
        expected = [cap.model(**x).logits for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.inference_mode():
                results[i] = [torch.equal(cap.model(**inputs[i % 2]).logits, expected[i % 2]) for _ in range(5)]
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(all(r) for r in results.values()) and len(results) == 4


# ------------------------------------------------------------------ sizes
def test_real_size_is_dinov2_large_plus_gemma2_2b_with_two_percent_trainable():
    with torch.device("meta"):
        model, processor = build_model("bridge", "real")
    counts = count_parameters(model, get_family("bridge"))
    assert counts["vision"] == pytest.approx(304.4e6, rel=0.002)  # facebook/dinov2-large
    assert counts["language"] == pytest.approx(2614.3e6, rel=0.002)  # google/gemma-2-2b
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == counts["connector"]
    assert 0.015 < trainable / counts["total"] < 0.025
    assert model.config.cross_attention_layers == [0, 5, 10, 15, 20]
    assert processor.image_processor.crop_size == {"height": 224, "width": 224}


def test_tiny_model_saves_through_the_factory(tmp_path):
    out = build_random_model("bridge", tmp_path / "b")
    assert (out / "modeling_bridge.py").is_file()
    assert (out / "model.safetensors").stat().st_size < 700_000


# ------------------------------------------------------------------ other stages
def test_chat_template_usage_gives_the_same_caption(bridge_dir, cap, shapes_images):
    """Code written for chat-template processors (the model card's snippet) works unchanged."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(bridge_dir, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(bridge_dir, trust_remote_code=True, dtype="auto")
    for prompt in (cap.prompt, None):
        content = [{"type": "image"}] + ([{"type": "text", "text": prompt}] if prompt else [])
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        assert text == processor.build_prompt(prompt)
        inputs = processor(text=[text], images=[[shapes_images[0]]], return_tensors="pt").to(model.device,
                                                                                              model.dtype)
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        got = processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
        want = caption_images(cap, shapes_images[:1], [prompt or ""], GenerationSettings(max_new_tokens=8))[0][0]
        assert " ".join(got.split()) == want


def test_space_captions_with_a_bridge_model_only_when_trusted(bridge_dir, cap, shapes_images, tmp_path):
    import shutil

    from tests.space.helpers import load_app_module

    app_mod = load_app_module()
    untrusted = tmp_path / "untrusted-copy"
    shutil.copytree(bridge_dir, untrusted)
    entries = app_mod.parse_models(f"{bridge_dir};trust_remote_code=true,{untrusted}")
    demo = app_mod.build_demo(entries, examples_dir=None)
    space = demo.caption_space
    png = tmp_path / "probe.png"
    shapes_images[1].save(png)
    settings = dict(max_new_tokens=8, num_beams=1, temperature=0, top_p=1, seed=-1)
    trusted_id, untrusted_id = space.model_id(space.infos[0]), space.model_id(space.infos[1])
    text, timing = space.caption((str(png), "probe.png"), trusted_id, "", variations=1, **settings)
    assert text == caption_images(cap, shapes_images[1:2], None, GenerationSettings(max_new_tokens=8))[0][0]
    with pytest.raises(Exception, match="trust"):
        space.caption((str(png), "probe.png"), untrusted_id, "", variations=1, **settings)


def test_compose_from_pretrained_backbone_and_lm(tmp_path, shapes_images):
    """compose: pretrained weights carried over untouched, a zero-gated bridge on top."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    from captioning.bridge.compose import main as compose_main
    from synthetic.tokenizer import build_bpe_tokenizer

    torch.manual_seed(3)
    vision = Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=32, patch_size=8))
    vision.save_pretrained(tmp_path / "vision")
    BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "vision")
    tok = build_bpe_tokenizer()
    tok.pad_token = None  # like many base LMs: compose falls back to eos for padding
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=True)).eval()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    out = tmp_path / "bridge"
    assert compose_main(["--vision", str(tmp_path / "vision"), "--text", str(tmp_path / "lm"), "--out", str(out),
                         "--bridge-depth", "2", "--bridge-heads", "4"]) == 0
    cap = load_captioner(out, trust_remote_code=True)
    assert cap.model.config.cross_attention_layers == [0, 2]
    assert cap.model.config.text_model_name_or_path == str(tmp_path / "lm")
    inputs = _batch(cap, shapes_images[:2], [cap.prompt, "Describe this image."])
    with torch.inference_mode():
        assert torch.equal(cap.model(**inputs).logits,
                           lm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits)
        feats = vision(pixel_values=inputs["pixel_values"]).last_hidden_state
        assert torch.equal(cap.model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state, feats)
    assert cap.model.generation_config.pad_token_id == cap.processor.tokenizer.eos_token_id
    assert compose_main(["--vision", str(tmp_path / "nope"), "--text", str(tmp_path / "lm"),
                         "--out", str(tmp_path / "x")]) == 2
