"""Every supported architecture end to end, on tiny random models built offline: the
family that serves it, the training encoding (exactly caption + stop token supervised, side
tensors the length of the ids, one bos), batched == single greedy captions, a fine-tune that
learns to stop, and the whole LoRA path (train -> eval -> release merge -> Auto reload)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from captioning.families import family_for_config
from captioning.families.base import IGNORE_INDEX, is_special, normalize_caption, per_token_keys

# architecture -> the family that serves it
ARCHS = {
    "qwen2_vl": "qwen_vl", "qwen2_5_vl": "qwen_vl", "qwen3_vl": "qwen_vl", "gemma3": "generic",
    "smolvlm": "idefics3", "llava": "generic", "idefics2": "generic", "paligemma": "paligemma",
    "florence2": "florence2", "idefics3": "idefics3", "blip": "blip",
}
CAPTION = "two red circles above a blue square"


@pytest.fixture(scope="module")
def images(shapes_images):
    """Shapes images plus two of other sizes (Qwen-VL's token count follows the image size)."""
    return [*shapes_images[:3], shapes_images[3].resize((48, 64)), shapes_images[4].resize((80, 56))]


def _load(folder):
    from captioning.loading import load_captioner

    return load_captioner(str(folder), dtype="fp32", device="cpu")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_family_and_training_encoding(arch, arch_models, images):
    cap = _load(arch_models(arch))
    fam, proc = cap.family, cap.processor
    assert fam.name == ARCHS[arch] == family_for_config(cap.model.config).name
    tok = fam.tokenizer(proc)
    stops = fam.stop_token_ids(proc)
    assert stops, "some token must end a caption"
    gc = cap.model.generation_config
    gc.eos_token_id = tok.eos_token_id  # as a checkpoint whose generation config names eos alone
    fam.prepare_model(cap.model, proc)
    gen_eos = [gc.eos_token_id] if isinstance(gc.eos_token_id, int) else list(gc.eos_token_id or [])
    assert set(stops) <= set(gen_eos), "generation stops where training captions end"

    ex = fam.encode_example(proc, images[0], CAPTION, cap.prompt)
    labels = ex["labels"][0]
    supervised = labels[labels != IGNORE_INDEX]
    # exactly the caption and the stop token are supervised (Florence-2's decoder also emits <s> first)
    assert tok.decode(supervised, skip_special_tokens=True).strip() == CAPTION
    assert supervised[-1].item() in stops
    n_special = [t for t in supervised.tolist() if is_special(tok, t)]
    assert len(n_special) <= (2 if arch == "florence2" else 1), tok.convert_ids_to_tokens(supervised)
    ids = ex["input_ids"][0]
    if fam.shifts_labels:  # decoder-only: the labels sit on the ids, at the end
        assert torch.equal(ids[-len(supervised):], supervised)
    for key in per_token_keys(ex):
        assert ex[key].shape == ex["input_ids"].shape, key
    if tok.bos_token_id is not None:  # never two bos tokens in a row at the start
        assert not (ids[0] == tok.bos_token_id and ids[1] == tok.bos_token_id)
        assert (ids == tok.bos_token_id).sum() <= 1

    # a batch of captions of different lengths: padded consistently, and the model takes it
    batch = fam.collate(proc, [ex, fam.encode_example(proc, images[3], "a star", cap.prompt)])
    for key in per_token_keys(batch):
        assert batch[key].shape == batch["input_ids"].shape, key
    from training.engine import caption_loss

    with torch.no_grad():
        out = cap.model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = caption_loss(shift=fam.shifts_labels)(out, batch["labels"])
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_image_options_apply_or_are_refused(arch, arch_models, images):
    """--image-longest-edge / --image-splitting change what the model sees where the family has
    that control (Qwen-VL: the pixel budget), and are refused where it has none."""
    import copy

    from captioning.errors import UserError

    cap = _load(arch_models(arch))
    fam = cap.family
    big = images[0].resize((256, 256))

    def seen(proc):  # the image tokens and the pixels the model gets
        inputs = fam.generation_inputs(proc, [big], [cap.prompt])
        return inputs["input_ids"].shape, inputs["pixel_values"]

    def same(a, b):
        return a[0] == b[0] and a[1].shape == b[1].shape and torch.equal(a[1], b[1])

    def configured(**options):
        proc = copy.deepcopy(cap.processor)
        fam.configure_processor(proc, **options)
        return proc

    for option in ("image_longest_edge", "image_splitting"):
        if option not in fam.image_options:
            with pytest.raises(UserError, match="no such control"):
                configured(**{option: 32 if option == "image_longest_edge" else True})
    if "image_longest_edge" in fam.image_options:
        assert not same(seen(configured(image_longest_edge=32)), seen(cap.processor))
    if "image_splitting" in fam.image_options:  # an image larger than one crop: crops + a global view
        large = {"image_longest_edge": 4 * max(big.size)}
        assert not same(seen(configured(image_splitting=True, **large)),
                        seen(configured(image_splitting=False, **large)))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_batched_captions_equal_single(arch, arch_models, images):
    from captioning.generation import GenerationSettings, caption_images

    cap = _load(arch_models(arch))
    fam, proc = cap.family, cap.processor
    settings = GenerationSettings(max_new_tokens=6)
    one = caption_images(cap, images, settings=settings, batch_size=1)
    assert caption_images(cap, images, settings=settings, batch_size=len(images)) == one
    prompts = [None, "Describe.", None, "Describe this image.", None] if fam.default_prompt else None
    if prompts:  # prompts of different lengths share a batch (left padding, or grouping)
        one = caption_images(cap, images, prompts, settings=settings, batch_size=1)
        assert caption_images(cap, images, prompts, settings=settings, batch_size=len(images)) == one
    # Random tiny models often say the same thing for every image, so the captions alone could
    # agree by chance: the first generated token's logits must agree too, and differ by image.
    if not fam.pads_left:
        return  # BLIP batches only equal prompts (above); its logits are per image anyway
    first = _first_step_logits(cap, fam.generation_inputs(proc, images, [cap.prompt] * len(images)))
    singles = torch.cat([_first_step_logits(cap, fam.generation_inputs(proc, [im], [cap.prompt])) for im in images])
    torch.testing.assert_close(first, singles, rtol=1e-4, atol=1e-5)
    assert (singles - singles[:1]).abs().amax() > 1e-6, "the image reaches the logits"


def _first_step_logits(cap, inputs) -> torch.Tensor:
    with torch.inference_mode():
        out = cap.family.generate(cap.model, inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    return out.logits[0].float()  # before any logits processor (bad words, forced tokens: -inf)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fine_tuned_model_stops(arch, arch_models, images):
    """Trained on one caption, greedy decoding reproduces it and ends at a stop token: the
    stop token is supervised and generation honours it."""
    from tests.training.helpers import memorise

    cap = _load(arch_models(arch))
    fam, proc, model = cap.family, cap.processor, cap.model
    memorise(cap, images[:2], [CAPTION] * 2, steps=100, stop_loss=0.02)
    with torch.inference_mode():
        inputs = fam.generation_inputs(proc, images[:1], [cap.prompt])
        new = fam.new_tokens(fam.generate(model, inputs, max_new_tokens=24, do_sample=False), inputs)[0]
    assert normalize_caption(fam.tokenizer(proc).decode(new, skip_special_tokens=True)) == CAPTION
    assert new[-1].item() in fam.stop_token_ids(proc) and len(new) < 24, new.tolist()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_lora_train_eval_release_reload(arch, arch_models, shapes_dir, tmp_path, images):
    """The LoRA path through the real stages: train (2 steps) -> eval generate -> release merge
    (its equivalence check) -> the merged folder reloads with the Auto classes alone."""
    from transformers import AutoModelForImageTextToText

    from captioning.generation import GenerationSettings, caption_images
    from captioning.processors import load_processor
    from eval.generate import GenerateConfig, run_generate
    from release.card import usage_snippet
    from release.merge import MergeOptions, merge_adapter
    from tests.training.helpers import config, tiny_recipe
    from training.train import train

    run = train(config(tiny_recipe(arch_models(arch), shapes_dir, tmp_path / "run")), log=lambda *_: None)
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["target_modules"], "LoRA wrapped the family's language-model layers"

    cfg = GenerateConfig(model=str(run), dataset=str(shapes_dir), split="test", out=str(tmp_path / "eval"),
                         max_images=4, batch_size=4, generation=GenerationSettings(max_new_tokens=6),
                         metrics=["CIDEr"], report=False)
    record = run_generate(cfg, log=lambda *_: None).record
    assert record["n_images"] == 4 and "CIDEr" in record["metrics"]
    assert record["model"]["family"] == ARCHS[arch]

    merged = merge_adapter(MergeOptions(adapter=run, out=tmp_path / "merged", probes=2, max_new_tokens=6),
                           log=lambda *_: None)
    assert merged.check["passed"] and merged.family == ARCHS[arch]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    processor = load_processor(str(tmp_path / "merged"))
    assert model.config.model_type == json.loads((arch_models(arch) / "config.json").read_text())["model_type"]
    assert type(processor).__name__ == type(_load(arch_models(arch)).processor).__name__

    # the model card's usage snippet (plain transformers) captions like the toolkit does
    if getattr(processor, "image_only", False):
        return  # the snippet's AutoProcessor needs torchvision for this architecture's processor
    png = tmp_path / "probe.png"
    images[0].save(png)
    ours = caption_images(_load(tmp_path / "merged"), [images[0]], settings=GenerationSettings(max_new_tokens=6))
    code = usage_snippet(merged.family, 5, str(tmp_path / "merged"), merged.check["prompt"], image=str(png),
                         max_new_tokens=6)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "snippet", "exec"), {"__name__": "__snippet__"})
    assert normalize_caption(buf.getvalue()) == ours[0][0]
