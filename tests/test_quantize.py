"""--quantize int8 (PyTorch dynamic int8 on CPU): every entry point loads an int8 model and captions with it, the
setting is recorded with the numbers it produced, and mistakes are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from captioning.errors import UserError
from tests.layers import linears, not_served_by


def _int8_layers(model) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    return sum(isinstance(m, DynamicInt8Linear) for m in model.modules())


def _all_int8(plain, int8) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    return linears(plain) > 0 and not not_served_by(plain, int8, DynamicInt8Linear)


@pytest.mark.parametrize("arch", ["idefics3", "blip", "bridge"])
def test_int8_quantises_every_linear_layer_and_stays_close(arch, tiny_models, shapes_images):
    from captioning.generation import GenerationSettings, caption_images
    from captioning.loading import load_captioner

    remote = arch == "bridge"
    fp32 = load_captioner(tiny_models[arch], dtype="fp32", device="cpu", trust_remote_code=remote)
    int8 = load_captioner(tiny_models[arch], dtype="fp32", device="cpu", quantize="int8", trust_remote_code=remote)
    assert fp32.quantize is None and int8.quantize == "int8"
    assert _int8_layers(fp32.model) == 0 and linears(int8.model) == 0
    assert _all_int8(fp32.model, int8.model)  # vision, connector, LM and head alike
    settings = GenerationSettings(max_new_tokens=5)
    one = caption_images(int8, shapes_images[:3], settings=settings, batch_size=1)
    assert caption_images(int8, shapes_images[:3], settings=settings, batch_size=3) == one  # never batch-dependent
    # the int8 model computes nearly the same function: teacher-forced logits agree closely
    fam = fp32.family
    ex = fam.encode_example(fp32.processor, shapes_images[0], "two red circles", fp32.prompt)
    ex.pop("labels")
    with torch.inference_mode():
        a, b = fp32.model(**ex).logits.flatten(), int8.model(**ex).logits.flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.98


def test_int8_layers_read_as_the_linear_layers_they_replace(tiny_models):
    """Model code reads a Linear layer's ``weight.dtype`` to cast its input (SigLIP2's patch
    embedding): an int8 layer's ``weight`` reads as the float weight it computes with (PyTorch's
    own ``weight`` is a method returning int8), ``bias`` as a tensor or None, shared siblings too;
    it is PyTorch's dynamic int8 Linear otherwise."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    from captioning.loading import load_captioner

    fp32 = load_captioner(tiny_models["idefics3"], dtype="fp32", device="cpu")
    int8 = load_captioner(tiny_models["idefics3"], dtype="fp32", device="cpu", quantize="int8")
    layers = dict(int8.model.named_modules())
    checked = 0
    for path, linear in fp32.model.named_modules():
        if type(linear) is torch.nn.Linear:
            layer, want = layers[path], linear.weight.detach()
            assert (layer.in_features, layer.out_features) == (linear.in_features, linear.out_features)
            weight = layer.weight
            assert (weight.shape, weight.dtype, weight.device) == (want.shape, want.dtype, want.device)
            step = float(want.abs().amax()) / 100  # int8's rounding of the weight, per output channel
            torch.testing.assert_close(weight.clone(), want, rtol=0, atol=step)
            assert (layer.bias is None) == (linear.bias is None)
            if linear.bias is not None:
                assert layer.bias.dtype == want.dtype and layer.bias.shape == linear.bias.shape
            checked += 1
    assert checked == linears(fp32.model) > 0
    first = next(m for m in int8.model.modules() if isinstance(m, DynamicInt8Linear))
    assert "dtype=torch.qint8, qscheme=torch.per_channel_affine" in repr(first)


def test_int8_with_an_adapter_merges_first(tiny_models, shapes_dir, tmp_path, shapes_images):
    from captioning.loading import load_captioner
    from tests.training.helpers import config, tiny_recipe
    from training.train import train

    run = train(config(tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "run")), log=lambda *_: None)
    cap = load_captioner(run, dtype="fp32", device="cpu", quantize="int8")
    assert cap.adapter == str(run) and cap.quantize == "int8"
    assert not any("lora" in n for n, _ in cap.model.named_modules())  # merged, then quantised
    assert _int8_layers(cap.model) > 0 and linears(cap.model) == 0


def test_quantize_mistakes_are_one_line_errors(tiny_models):
    from captioning.loading import load_captioner

    with pytest.raises(UserError, match="--quantize 'int4': choose one of none, int8"):
        load_captioner(tiny_models["idefics3"], device="cpu", quantize="int4")
    with pytest.raises(UserError, match="pick one"):
        load_captioner(tiny_models["idefics3"], device="cpu", quantize="int8", load_in_4bit=True)


def test_auto_is_int8_on_cpu_only_for_families_that_passed_the_gate(tiny_models, monkeypatch):
    from captioning.families.blip import BlipFamily
    from captioning.families.idefics3 import Idefics3Family
    from captioning.loading import load_captioner

    monkeypatch.setattr(Idefics3Family, "int8_on_cpu", True)
    monkeypatch.setattr(BlipFamily, "int8_on_cpu", False)
    assert load_captioner(tiny_models["idefics3"], device="cpu", quantize="auto").quantize == "int8"
    assert load_captioner(tiny_models["blip"], device="cpu", quantize="auto").quantize is None


def test_eval_records_int8_and_refuses_to_resume_at_another_precision(tiny_models, shapes_dir, tmp_path, capsys):
    from eval.run import main

    out = tmp_path / "eval"
    args = ["generate", "--model", str(tiny_models["idefics3"]), "--dataset", str(shapes_dir), "--split", "test",
            "--out", str(out), "--max-images", "4", "--max-new-tokens", "5", "--metrics", "CIDEr", "--no-report"]
    assert main([*args, "--quantize", "int8"]) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["quantize"] == "int8" and rec["dtype"] == "float32"
    assert rec["batch_size"] == 8 and rec["images_per_forward"] == 1  # what ran, beside what was asked
    capsys.readouterr()
    # the same folder at full precision is another measurement: refused, not mixed
    assert main([*args, "--quantize", "none"]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "quantize: 'int8' -> None" in err and "--overwrite" in err

    from captioning.records import precision_label

    assert precision_label(rec["dtype"], rec["quantize"]) == "int8 weights and activations (float32 elsewhere)"
    assert precision_label("float32") == "float32"
    batched = precision_label("float32", "int8", 8)
    assert batched == "int8 weights and activations (float32 elsewhere), 8 images per forward"
    assert precision_label("float32", None, 8) == "float32"  # full precision batches anyway


def test_int8_batches_is_opt_in_recorded_and_reproduced(tiny_models, shapes_dir, tmp_path, capsys, monkeypatch):
    """int8 takes one image per forward unless --int8-batches asks for --batch-size; the choice is
    recorded, a run folder refuses to go on without it, and reproduce re-runs as recorded."""
    import shutil

    import captioning.generation as generation
    import eval.generate as eval_generate
    from eval.reproduce import reproduce
    from eval.run import main

    forwards: list[int] = []
    real = generation._batches

    def spy(*a, **kw):
        for chunk in real(*a, **kw):
            forwards.append(len(chunk))
            yield chunk

    monkeypatch.setattr(generation, "_batches", spy)
    model = tmp_path / "model"
    shutil.copytree(tiny_models["idefics3"], model)
    base = ["generate", "--model", str(model), "--dataset", str(shapes_dir), "--split", "test", "--max-images", "4",
            "--batch-size", "4", "--max-new-tokens", "4", "--metrics", "CIDEr", "--no-report"]
    args = [*base, "--quantize", "int8"]
    one, batched = tmp_path / "one", tmp_path / "batched"
    assert main([*args, "--out", str(one)]) == 0
    assert forwards == [1, 1, 1, 1]
    forwards.clear()
    assert main([*args, "--out", str(batched), "--int8-batches"]) == 0
    assert forwards == [4]
    rec = json.loads((batched / "metrics.json").read_text())
    assert rec["quantize"] == "int8" and rec["batch_size"] == 4 and rec["images_per_forward"] == 4
    from captioning.records import record_precision

    assert record_precision(rec).endswith(", 4 images per forward")  # what the card and reproduce print
    capsys.readouterr()
    assert main([*args, "--out", str(batched)]) != 0  # the same folder one image per forward: refused
    assert "int8_batches" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x"), "--int8-batches"]) != 0
    assert "--int8-batches goes with --quantize int8" in capsys.readouterr().err

    runs = []

    def stop(cfg, **kw):  # what reproduce would run, without running it
        runs.append(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_generate, "run_generate", stop)
    for folder, as_batched in ((one, False), (batched, True)):
        shutil.copy(folder / "metrics.json", model / "metrics.json")  # a release folder: model + its record
        with pytest.raises(KeyboardInterrupt):
            reproduce(str(model), progress=False)
        assert runs[-1].quantize == "int8" and runs[-1].int8_batches is as_batched


def test_caption_cli_takes_quantize(tiny_models, shapes_dir, capsys):
    from captioning.caption import main

    png = sorted((shapes_dir / "images" / "test").glob("*.png"))[0]
    assert main([str(png), "--model", str(tiny_models["idefics3"]), "--quantize", "int8",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith(str(png))


def test_space_entries_take_quantize(tiny_models):
    from space.caption_space.models import ModelEntry, parse_models
    from space.caption_space.registry import ModelRegistry

    entries = parse_models(f"{tiny_models['idefics3']};quantize=int8, {tiny_models['blip']}")
    assert [e.quantize for e in entries] == ["int8", None]
    with pytest.raises(UserError, match="quantize must be one of none, int8"):
        parse_models("org/a;quantize=int4")
    registry = ModelRegistry([], device="cpu", quantize="none")
    assert registry._load(entries[0]).quantize == "int8"  # the entry's own setting wins
    assert registry._load(ModelEntry(id=str(tiny_models["blip"]))).quantize is None  # the Space's default


@pytest.mark.parametrize("arch", ["idefics3", "blip"])
def test_4bit_captions_on_every_cpu_whatever_the_layer_shapes(arch, tiny_models, shapes_images):
    """bitsandbytes' AVX512-BF16 kernel repacks 4-bit weights in blocks and failed with a
    reshape error on the tiny models' narrow layers (only on such CPUs): those layers are
    switched to its portable path, so 4-bit captions on every CPU."""
    pytest.importorskip("bitsandbytes")
    from captioning.generation import GenerationSettings, caption_images
    from captioning.loading import load_captioner

    captioner = load_captioner(tiny_models[arch], device="cpu", load_in_4bit=True)
    fours = [m for m in captioner.model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert fours, "no 4-bit layer was loaded"
    for m in fours:
        packs = m.out_features % 32 == 0 and m.in_features % m.weight.blocksize == 0
        assert packs or not m.support_avx512bf16_for_cpu, m
    captions = caption_images(captioner, shapes_images[:2], None, GenerationSettings(max_new_tokens=4))
    assert len(captions) == 2 and all(isinstance(c[0], str) for c in captions)
