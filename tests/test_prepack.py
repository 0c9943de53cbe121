"""Prepacked fp32 Linear layers (captioning.kernels.prepack_linear, the lean CPU text side):
every entry point serves with them, they compute the same function as nn.Linear, a trained
model's greedy captions are unchanged, and a prepacked model refuses training and saving
instead of silently doing neither. Sibling layers that read one input (q/k/v, gate/up) share one
product (captioning.kernels.fuse_siblings), prepacked or int8, without changing the function.
Prepacked, shared and int8 layers still read as nn.Linear to the model code around them, and
--no-prepack turns prepacking off at every entry point."""

from __future__ import annotations

import copy

import pytest
import torch

from captioning.kernels import PrepackedLinear, SiblingLinear, fuse_siblings, prepack_linear, quantize_int8
from captioning.loading import load_captioner
from tests.layers import linears, not_served_by

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")

# one architecture per family (and the encoder-decoder, which has its own generate path)
ARCHS = ["idefics3", "blip", "bridge", "qwen2_vl", "gemma3", "paligemma", "florence2"]
CAPTIONS = ["two red circles above a blue square", "one green triangle", "three small yellow squares"]


def _packed(model) -> int:
    return sum(isinstance(m, PrepackedLinear) for m in model.modules())


def _load(folder, **kw):
    return load_captioner(str(folder), dtype="fp32", device="cpu", trust_remote_code=True, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_prepacked_layers_compute_the_same_function(arch, arch_models, shapes_images):
    plain, packed = _load(arch_models(arch)), _load(arch_models(arch), prepack=True)
    assert _packed(plain.model) == 0 and linears(packed.model) == 0
    assert linears(plain.model) > 0 and not not_served_by(plain.model, packed.model, PrepackedLinear)  # all of them
    fam = plain.family
    for images in (shapes_images[:1], shapes_images[:3]):  # prefill of one image, and a batch
        inputs = fam.generation_inputs(plain.processor, images, [plain.prompt] * len(images))
        kw = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
        with torch.inference_mode():
            a = fam.generate(plain.model, inputs, **kw).logits[0]
            b = fam.generate(packed.model, inputs, **kw).logits[0]
        # same arithmetic in another summation order: float32 rounding apart
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().amax()))


def _shared(model) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, SiblingLinear)}


def test_sibling_layers_share_one_product_in_self_attention_and_mlp(arch_models):
    smolvlm = _load(arch_models("idefics3"), prepack=True).model
    assert _shared(smolvlm) == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    attn = smolvlm.model.text_model.layers[0].self_attn
    assert attn.q_proj.product is attn.k_proj.product is attn.v_proj.product
    assert isinstance(attn.q_proj.product.linear, PrepackedLinear)
    assert attn.q_proj.product is not smolvlm.model.text_model.layers[1].self_attn.q_proj.product
    florence = _load(arch_models("florence2"), prepack=True).model  # BART: self- and cross-attention
    cross = [m for n, m in florence.named_modules() if ".encoder_attn." in n and n.endswith("_proj")]
    assert cross and all(isinstance(m, PrepackedLinear) for m in cross)
    assert _shared(_load(arch_models("blip"), prepack=True).model) == {"query", "key", "value"}


@pytest.mark.parametrize("bias", [False, True])
def test_a_shared_product_is_never_stale(bias):
    """Siblings called on one input share a product; a sibling called on another input (as in
    cross-attention) gets that input's product; the shared output is released once taken."""
    torch.manual_seed(0)
    names, widths = ("q_proj", "k_proj", "v_proj"), (32, 8, 8)
    plain = torch.nn.Module()
    for name, width in zip(names, widths):
        setattr(plain, name, torch.nn.Linear(32, width, bias=bias))
    for served in (fuse_siblings(copy.deepcopy(plain)), prepack_linear(fuse_siblings(copy.deepcopy(plain)))):
        served.eval()
        product = served.q_proj.product
        x, y = torch.randn(1, 5, 32), torch.randn(1, 7, 32)

        def same(name, inp, served=served):
            torch.testing.assert_close(getattr(served, name)(inp), getattr(plain, name)(inp), rtol=1e-5, atol=1e-5)

        with torch.inference_mode():
            for name in names:  # self-attention: one input
                same(name, x)
            assert product._state is None  # released once each sibling took its columns
            same("q_proj", x)  # cross-attention: q reads x, k and v read y
            same("k_proj", y)
            same("v_proj", y)
            same("q_proj", y)
            same("q_proj", y)  # the same sibling twice
            same("v_proj", x)


def test_shared_products_do_not_change_the_function(arch_models, shapes_images, monkeypatch):
    """Prepacked and int8 alike: a model served with shared sibling products gives the logits
    of the same model served with every layer on its own."""
    import captioning.kernels as kernels

    folder = arch_models("idefics3")
    fused = {q: _load(folder, prepack=True, quantize=q) for q in (None, "int8")}
    monkeypatch.setattr(kernels, "SIBLING_GROUPS", ())
    apart = {q: _load(folder, prepack=True, quantize=q) for q in (None, "int8")}
    assert not _shared(apart[None].model) and _shared(fused["int8"].model)
    fam = fused[None].family
    inputs = fam.generation_inputs(fused[None].processor, shapes_images[:2], [fused[None].prompt] * 2)
    kw = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.inference_mode():
        for q in fused:
            a = fam.generate(apart[q].model, inputs, **kw).logits
            b = fam.generate(fused[q].model, inputs, **kw).logits
            for x, y in zip(a, b):
                torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5 * float(x.abs().amax()))


def _memorise(folder, images, out):
    """A model fine-tuned to give each image its own caption, saved as a model folder."""
    from tests.training.helpers import memorise

    cap = _load(folder)
    memorise(cap, images, CAPTIONS, steps=150, stop_loss=0.01)
    cap.model.save_pretrained(out)
    cap.processor.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["idefics3", "blip"])
def test_trained_captions_are_unchanged(arch, arch_models, shapes_images, tmp_path):
    from captioning.generation import GenerationSettings, caption_images

    folder = _memorise(arch_models(arch), shapes_images[:3], tmp_path / "trained")
    settings = GenerationSettings(max_new_tokens=12)
    plain = caption_images(_load(folder), shapes_images[:3], settings=settings)
    packed = caption_images(_load(folder, prepack=True), shapes_images[:3], settings=settings)
    assert plain == [[c] for c in CAPTIONS]  # learnt: the comparison below is between real captions
    assert packed == plain


def test_prepack_applies_only_to_fp32_on_cpu(arch_models):
    folder = arch_models("idefics3")
    assert _packed(_load(folder, prepack=True, quantize="int8").model) == 0  # int8 layers instead
    bf16 = load_captioner(str(folder), dtype="bf16", device="cpu", prepack=True)
    assert _packed(bf16.model) == 0 and linears(bf16.model) > 0


def test_with_an_adapter_merges_first(tiny_models, shapes_dir, tmp_path):
    from tests.training.helpers import config, tiny_recipe
    from training.train import train

    run = train(config(tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "run")), log=lambda *_: None)
    cap = load_captioner(run, dtype="fp32", device="cpu", prepack=True)
    assert cap.adapter == str(run)
    assert not any("lora" in n for n, _ in cap.model.named_modules()) and _packed(cap.model) > 0


def test_a_prepacked_model_refuses_training_and_saving(arch_models, tmp_path):
    cap = _load(arch_models("idefics3"), prepack=True)
    with pytest.raises(RuntimeError, match="prepacked for CPU inference"):
        cap.model.train()
    with pytest.raises(RuntimeError, match="prepacked for CPU inference"):
        cap.model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_every_captioning_entry_point_serves_prepacked(tiny_models, shapes_dir, tmp_path, monkeypatch):
    """captioning.caption, eval generate and the Space load with prepack=True. (Training and
    release merge load plain layers: a prepacked model refuses train() and saving, so their
    own tests would fail if they did not.)"""
    import captioning.loading as loading

    seen: list[bool] = []
    real = loading.load_captioner

    def spy(*a, **kw):
        seen.append(kw.get("prepack", False))
        return real(*a, **kw)

    monkeypatch.setattr(loading, "load_captioner", spy)
    from captioning.caption import main as caption_main
    from eval.run import main as eval_main
    from space.caption_space.models import ModelEntry
    from space.caption_space.registry import ModelRegistry

    png = sorted((shapes_dir / "images" / "test").glob("*.png"))[0]
    model = str(tiny_models["idefics3"])
    assert caption_main([str(png), "--model", model, "--max-new-tokens", "3"]) == 0
    assert eval_main(["generate", "--model", model, "--dataset", str(shapes_dir), "--split", "test",
                      "--out", str(tmp_path / "eval"), "--max-images", "2", "--max-new-tokens", "3",
                      "--metrics", "CIDEr", "--no-report"]) == 0
    space_cap = ModelRegistry([], device="cpu", quantize="none")._load(ModelEntry(id=model))
    assert seen == [True, True, True] and _packed(space_cap.model) > 0


#: the two ways a model's Linear layers are served, each after sharing sibling products
SERVED = {"prepacked": lambda m: prepack_linear(fuse_siblings(m)), "int8": lambda m: quantize_int8(fuse_siblings(m))}


class _ReadsItsLinears(torch.nn.Module):
    """Model code that reads its layers as nn.Linear: it casts its input to the patch embedding's
    ``weight.dtype`` and ``device``, as SigLIP2's (LFM2-VL's vision tower) does on every call."""

    def __init__(self):
        super().__init__()
        self.patch_embedding = torch.nn.Linear(12, 8)
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(8, w, bias=False) for w in (8, 4, 4))

    def forward(self, x):
        weight = self.patch_embedding.weight
        assert weight.shape == (self.patch_embedding.out_features, self.patch_embedding.in_features)
        x = self.patch_embedding(x.to(dtype=weight.dtype, device=weight.device))
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)


@pytest.mark.parametrize("serve", SERVED)
def test_served_layers_read_as_nn_linear(serve):
    """weight (shape, dtype, device, and the values the layer computes with), bias, in_features
    and out_features, of a layer on its own and of siblings sharing a product; the weight is
    read-only instead of silently ignoring a write."""
    torch.manual_seed(0)
    plain = _ReadsItsLinears().eval()
    served = SERVED[serve](copy.deepcopy(plain)).eval()
    assert linears(served) == 0 and isinstance(served.q_proj, SiblingLinear)
    x = torch.randn(2, 5, 12, dtype=torch.float64)  # cast to the weight's dtype by the model
    with torch.inference_mode():
        want = plain(x)
        torch.testing.assert_close(served(x), want, rtol=0.05, atol=0.05 * float(want.abs().amax()))
    for name, layer in plain.named_children():
        got = getattr(served, name)
        assert (got.in_features, got.out_features) == (layer.in_features, layer.out_features)
        w = got.weight
        assert (w.shape, w.dtype, w.device) == (layer.weight.shape, torch.float32, layer.weight.device)
        # the weight the layer computes with: the original (prepacked), rounded to int8's steps (int8)
        step = 0 if serve == "prepacked" else float(layer.weight.detach().abs().amax()) / 100
        torch.testing.assert_close(w.clone(), layer.weight.detach(), rtol=0, atol=step)
        assert (got.bias is None) == (layer.bias is None)
        if layer.bias is not None:
            torch.testing.assert_close(got.bias.clone(), layer.bias.detach(), rtol=0, atol=1e-6)
        with torch.inference_mode():
            h = torch.randn(3, layer.in_features)
            direct = torch.nn.functional.linear(h, w, got.bias)
            torch.testing.assert_close(direct, layer(h), rtol=0.05, atol=step * 12 + 1e-5)
        with pytest.raises(RuntimeError, match="read-only"):
            w.data.mul_(2)


def _tiny_lfm2_vl():
    """A tiny random LFM2-VL (a SigLIP2 vision tower, whose patch embedding is a Linear layer
    read for its weight's dtype), and inputs for its image features: two images of 4x4 and 4x2
    patches."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Lfm2VlConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no LFM2-VL")
    vision = dict(model_type="siglip2_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_channels=3, patch_size=4, num_patches=16)
    text = dict(model_type="lfm2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, layer_types=["conv", "full_attention"])
    config = transformers.Lfm2VlConfig(vision_config=vision, text_config=text, downsample_factor=2,
                                       projector_hidden_size=16)
    torch.manual_seed(0)
    model = transformers.Lfm2VlForConditionalGeneration(config).eval()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0], mask[1, :8] = True, True
    inputs = {"pixel_values": torch.randn(2, 16, 3 * 4 * 4), "spatial_shapes": torch.tensor([[4, 4], [4, 2]]),
              "pixel_attention_mask": mask}
    return model, inputs


@pytest.mark.parametrize("serve", SERVED)
def test_a_siglip2_vision_tower_runs_served(serve):
    """LFM2-VL's vision tower reads ``patch_embedding.weight.dtype`` on every call: served
    prepacked or int8, it runs and gives the image features of the plain model."""
    plain, inputs = _tiny_lfm2_vl()
    assert type(plain.model.vision_tower.embeddings.patch_embedding) is torch.nn.Linear
    served = SERVED[serve](copy.deepcopy(plain)).eval()
    assert linears(served) == 0
    with torch.inference_mode():
        want = plain.get_image_features(**inputs).pooler_output
        got = served.get_image_features(**inputs).pooler_output
    tol = 1e-5 if serve == "prepacked" else 0.1
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol * float(a.abs().amax()))


def test_no_prepack_reaches_load_captioner_from_every_entry_point(tiny_models, shapes_dir, tmp_path, monkeypatch):
    """--no-prepack on captioning.caption, eval generate and the Space (python space/app.py):
    load_captioner is asked for plain layers and serves them."""
    import huggingface_hub

    import captioning.loading as loading
    from tests.space.helpers import free_port, load_app_module

    seen: list[tuple[bool, int]] = []
    real = loading.load_captioner

    def spy(*a, **kw):
        cap = real(*a, **kw)
        seen.append((kw.get("prepack", False), _packed(cap.model)))
        return cap

    monkeypatch.setattr(loading, "load_captioner", spy)
    from captioning.caption import main as caption_main
    from eval.run import main as eval_main

    png = sorted((shapes_dir / "images" / "test").glob("*.png"))[0]
    model = str(tiny_models["idefics3"])
    assert caption_main([str(png), "--model", model, "--max-new-tokens", "3", "--no-prepack"]) == 0
    assert eval_main(["generate", "--model", model, "--dataset", str(shapes_dir), "--split", "test",
                      "--out", str(tmp_path / "eval"), "--max-images", "2", "--max-new-tokens", "3",
                      "--metrics", "CIDEr", "--no-report", "--no-prepack"]) == 0

    space_app = load_app_module()
    for name, value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        monkeypatch.setenv(name, value)  # main sets them: put back after the test
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)

    def launch(demo, **kwargs):  # instead of serving: the first visitor's load, then Ctrl-C
        registry = demo.caption_space.registry
        registry.get(next(iter(registry.infos)))
        raise KeyboardInterrupt

    monkeypatch.setattr(space_app.gr.Blocks, "launch", launch)
    argv = ["--models", model, "--port", str(free_port()), "--quantize", "none"]
    assert space_app.main([*argv, "--no-prepack"]) == 0
    assert seen == [(False, 0)] * 3
