"""LoRA, QLoRA (CPU) and full fine-tuning on tiny SmolVLM and BLIP: only the intended
parameters change, and the output folder follows the contract."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from captioning.errors import UserError
from tests.training.helpers import Snapshot, config, tiny_recipe
from training.train import train


def _run(recipe, **kw):
    snap = Snapshot()
    out = train(config(recipe), callbacks=[snap], log=lambda *_: None, **kw)
    return out, snap


def test_lora_smolvlm_changes_only_the_adapter_and_writes_the_contract(tiny_models, shapes_dir, tmp_path, scorer):
    from captioning.generation import caption
    from captioning.images import load_image
    from captioning.loading import load_captioner

    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "out", eval={
        "enabled": True, "every_steps": 2, "loss_samples": 4, "generate_samples": 4, "max_new_tokens": 5})
    out, snap = _run(recipe, scorer=scorer)
    changed = snap.changed()
    lora = {n for n in snap.before if "lora_" in n}
    assert lora and changed == lora  # every LoRA matrix moved, nothing else did
    assert all("text_model.layers" in n for n in lora)  # the family targets: never the vision tower

    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.yaml", "metrics.json",
                 "val_predictions.json", "tokenizer_config.json", "processor_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists() and not (out / ".staging").exists()
    assert list((out / "logs").glob("events.out.tfevents.*")), "TensorBoard logs"
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()

    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_models["idefics3"].resolve())
    cfg = yaml.safe_load((out / "train_config.yaml").read_text())
    assert cfg["model"]["family"] == "idefics3" and cfg["data"]["prompt"] == "Give a concise caption."
    assert cfg["lora"]["target_modules"].startswith(r"model\.text_model\.layers\.\d+\.")  # the derived targets
    assert set(cfg) >= {"model", "lora", "quantization", "data", "optim", "eval", "output"}

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"CIDEr", "Bleu_4", "loss", "perplexity"}
    assert metrics["n_images"] == 4 and metrics["dataset"]["split"] == "val" and metrics["dataset"]["hash"]
    for key in ("unavailable", "model", "generation", "prompt", "versions", "created", "seconds", "train", "best"):
        assert key in metrics, key
    assert metrics["model"]["method"] == "lora" and metrics["train"]["global_step"] == 2
    assert metrics["lora_coverage"]["targeted"] == metrics["lora_coverage"]["language_linear"] == 14

    cap = load_captioner(out, device="cpu")
    assert cap.adapter == str(out) and cap.family.name == "idefics3"
    img = load_image(sorted((shapes_dir / "images" / "test").glob("*.png"))[0])
    assert isinstance(caption(cap, img), str)


def test_qlora_runs_on_cpu_and_trains_only_the_adapter(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "q",
                         quantization={"load_in_4bit": True}, output={"tensorboard": False})
    out, snap = _run(recipe)
    assert "Linear4bit" in snap.modules.values()
    lora = {n for n in snap.before if "lora_" in n}
    assert snap.changed() == lora
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["model"]["method"] == "qlora"


def test_full_finetune_keeps_the_frozen_tower(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "full", lora={"enabled": False},
                         output={"tensorboard": False})
    out, snap = _run(recipe)
    changed = snap.changed()
    assert not any("vision_model" in n or "connector" in n for n in changed)
    assert any("text_model.layers" in n for n in changed) and "lm_head.weight" in changed
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_gradient_checkpointing_dora_rslora_and_connector(tiny_models, shapes_dir, tmp_path):
    """Frozen tower + LoRA + non-reentrant checkpointing still gives the adapter gradients;
    model.train_connector trains the connector in full next to the adapter."""
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "gc",
                         lora={"use_dora": True, "use_rslora": True},
                         model={"train_connector": True}, optim={"activation_checkpointing": True},
                         output={"tensorboard": False})
    out, snap = _run(recipe)
    changed = snap.changed()
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any("connector" in n for n in changed)
    assert not any("vision_model" in n for n in changed)
    assert not any("text_model" in n and "lora_" not in n for n in changed)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["use_dora"] and adapter["use_rslora"] and adapter["modules_to_save"] == ["model.connector"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_blip(tiny_models, shapes_dir, tmp_path, method):
    recipe = tiny_recipe(tiny_models["blip"], shapes_dir, tmp_path / method, lora={"enabled": method == "lora"},
                         optim={"label_smoothing_factor": 0.1}, output={"tensorboard": False})
    out, snap = _run(recipe)
    changed = snap.changed()
    assert changed and not any("vision_model" in n for n in changed)
    if method == "lora":
        # (in the tiny random BLIP every image token is alike, so cross-attention query/key
        # get no gradient; the other LoRA matrices must all move)
        lora = {n for n in snap.before if "lora_" in n}
        assert changed <= lora and all("text_decoder" in n for n in lora)
        assert {n for n in lora if "crossattention.self.query" not in n and "crossattention.self.key" not in n} \
            <= changed
    else:
        assert all("text_decoder" in n for n in changed)
    cfg = yaml.safe_load((out / "train_config.yaml").read_text())
    assert cfg["model"]["family"] == "blip" and cfg["data"]["prompt"] is None


def test_train_connector_is_refused_for_blip(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["blip"], shapes_dir, tmp_path / "b", model={"train_connector": True})
    with pytest.raises(UserError, match="no separate connector"):
        train(config(recipe), log=lambda *_: None)


@pytest.mark.parametrize("arch", ["idefics3", "smolvlm"])  # SmolVLM and SmolVLM2: the families with the cache
def test_feature_cache_gives_the_same_loss(arch, tiny_models, shapes_dir, tmp_path):
    from captioning.data import linguistic_errors, load_captions
    from captioning.loading import load_captioner
    from synthetic.factory import build_random_model
    from training import data as tdata
    from training.engine import caption_loss

    folder = tiny_models[arch] if arch in tiny_models else build_random_model(arch, tmp_path / arch)
    cap = load_captioner(folder, dtype="fp32", device="cpu")
    model, proc, fam = cap.model, cap.processor, cap.family
    assert fam.feature_cache
    ds = load_captions(shapes_dir, "val", max_samples=6)
    cache = tdata.compute_feature_cache(model, fam, proc, ds, cap.prompt, batch_size=4)
    n_tokens = 9 if arch == "idefics3" else 16  # image tokens per 64 px image of each tiny model
    assert len(cache.features) == 6 and cache.features[0].shape == (n_tokens, model.config.text_config.hidden_size)
    plain = tdata.CaptionTrainDataset(ds, fam, proc, cap.prompt, references="all",
                                      transform=linguistic_errors)
    cached = tdata.CaptionTrainDataset(ds, fam, proc, cap.prompt, references="all", cache=cache,
                                       transform=linguistic_errors)
    for i in range(len(plain)):  # the cached examples carry exactly the ids and labels of the plain ones
        p, c = plain[i], cached[i]
        assert torch.equal(p["input_ids"], c["input_ids"]) and torch.equal(p["labels"], c["labels"])
    collate = tdata.Collator(fam, proc)
    idx = list(range(0, len(plain), 3))
    a = collate([plain[i] for i in idx])
    b = collate([cached[i] for i in idx])
    assert "pixel_values" in a and "pixel_values" not in b and "image_features" in b
    loss = caption_loss()
    with torch.no_grad():
        la = loss(model(**{k: v for k, v in a.items() if k != "labels"}), a["labels"])
        inputs = tdata.features_to_model_inputs(dict(b), fam)
        lb = loss(model(**{k: v for k, v in inputs.items() if k != "labels"}), b["labels"])
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)


def test_feature_cache_run_and_refusals(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "fc", data={"feature_cache": True},
                         output={"tensorboard": False})
    out, snap = _run(recipe)
    assert snap.changed() == {n for n in snap.before if "lora_" in n}
    blip = tiny_recipe(tiny_models["blip"], shapes_dir, tmp_path / "fcb", data={"feature_cache": True})
    with pytest.raises(UserError, match="cannot take precomputed image features"):
        train(config(blip), log=lambda *_: None)
    vision_lora = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "fcv", data={"feature_cache": True},
                              lora={"target_modules": ["q_proj"]})
    with pytest.raises(UserError, match="vision/connector"):
        train(config(vision_lora), log=lambda *_: None)


def test_validation_generates_from_image_and_prompt_only(tiny_models, shapes_dir):
    """The reference captions never reach the generation inputs: the inputs are exactly the
    prompt-only processor outputs, whatever the references say."""
    from captioning.data import load_captions
    from captioning.generation import GenerationSettings
    from captioning.loading import load_captioner
    from training.evaluation import CaptionEvaluator

    cap = load_captioner(tiny_models["idefics3"], dtype="fp32", device="cpu")
    ds = load_captions(shapes_dir, "val", max_samples=5)
    seen = []
    fam = cap.family
    real = fam.generation_inputs

    def spy(processor, images, prompts):
        inputs = real(processor, images, prompts)
        seen.append({"prompts": list(prompts), "inputs": {k: v.clone() for k, v in inputs.items()}})
        return inputs

    fam.generation_inputs = spy

    class FakeScorer:
        def score(self, refs, preds, metrics=None, **kwargs):
            return {"metrics": {m: 0.0 for m in metrics}, "empty_captions": []}

    def run(refs):
        ev = CaptionEvaluator(ds, refs, family=fam, processor=cap.processor, prompt=cap.prompt,
                              settings=GenerationSettings(max_new_tokens=3), metrics=["CIDEr"], batch_size=2,
                              scorer_factory=FakeScorer)
        seen.clear()
        ev.evaluate(cap.model)
        return [dict(s) for s in seen]

    refs = ds.references_coco()
    first = run(refs)
    secret = {**refs, "annotations": [{**a, "caption": "zebra xylophone quartz"} for a in refs["annotations"]]}
    second = run(secret)
    assert first and len(first) == len(second)
    tok = cap.processor.tokenizer
    captions = [c for ex in ds for c in ex.references]
    for a, b in zip(first, second):
        assert a["prompts"] == [cap.prompt] * len(a["prompts"])
        assert a["inputs"].keys() == b["inputs"].keys()
        for k in a["inputs"]:
            assert torch.equal(a["inputs"][k], b["inputs"][k]), k
        for row in tok.batch_decode(a["inputs"]["input_ids"], skip_special_tokens=True):
            assert not any(c in row for c in captions)
    for i, batch in enumerate(first):
        n = len(batch["prompts"])
        expected = real(cap.processor, [ex.load_image() for ex in ds][2 * i:2 * i + n], [cap.prompt] * n)
        assert torch.equal(batch["inputs"]["input_ids"], expected["input_ids"])
        assert torch.equal(batch["inputs"]["pixel_values"], expected["pixel_values"])


def test_output_folder_guards(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "o", output={"tensorboard": False})
    train(config(recipe), log=lambda *_: None)
    with pytest.raises(UserError, match="already holds files: pass --resume"):
        train(config(recipe), log=lambda *_: None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    other = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "other", output={"overwrite": True})
    with pytest.raises(UserError, match="refusing to delete"):
        train(config(other), log=lambda *_: None)
    fresh = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "fresh")
    with pytest.raises(UserError, match="holds no checkpoint"):
        train(config(fresh), resume=True, log=lambda *_: None)
    # a corrupt checkpoint named explicitly is reported, not loaded
    ckpt = tmp_path / "o" / "checkpoints" / "checkpoint-2"
    weights = ckpt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(UserError, match="corrupt adapter_model.safetensors"):
        train(config(recipe), resume=str(ckpt), log=lambda *_: None)


def test_full_finetune_of_the_connector_alone(tiny_models, shapes_dir, tmp_path):
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "conn", lora={"enabled": False},
                         model={"freeze_language": True, "train_connector": True}, output={"tensorboard": False})
    out, snap = _run(recipe)
    changed = snap.changed()
    assert changed and all(".connector." in n for n in changed)


def test_early_stopping_with_patience(tiny_models, shapes_dir, tmp_path):
    """A run that stops improving stops: with a vanishing learning rate the val loss stays put,
    so patience 1 ends training after the second validation."""
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "es",
                         optim={"max_steps": 10, "learning_rate": 1e-12},
                         eval={"enabled": True, "every_steps": 1, "loss_samples": 2, "generate_samples": 0,
                               "metric_for_best": "loss", "early_stopping_patience": 1},
                         output={"tensorboard": False})
    out = train(config(recipe), log=lambda *_: None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2
    assert metrics["best"]["metric"] == "loss" and metrics["best"]["step"] == 1
    assert set(metrics["metrics"]) == {"loss", "perplexity"}


def test_a_failed_start_does_not_block_the_next_run(tiny_models, shapes_dir, tmp_path):
    """A run that fails before its first checkpoint (here: the dataset is missing) leaves
    nothing that makes the next run in the same folder ask for --output.overwrite."""
    out = tmp_path / "o"
    bad = tiny_recipe(tiny_models["idefics3"], tmp_path / "no-such-data", out, output={"tensorboard": False})
    with pytest.raises(UserError):
        train(config(bad), log=lambda *_: None)
    good = tiny_recipe(tiny_models["idefics3"], shapes_dir, out, output={"tensorboard": False})
    assert train(config(good), log=lambda *_: None) == out
    assert (out / "metrics.json").is_file()
    # a finished run is not a failed start: it still needs --resume or --output.overwrite
    with pytest.raises(UserError, match="already holds files"):
        train(config(good), log=lambda *_: None)


def test_skip_bad_images_leaves_unreadable_training_images_out(tiny_models, shapes_dir, tmp_path):
    import shutil

    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    bad = sorted((data / "images" / "train").glob("*.png"))[2]
    bad.write_bytes(bad.read_bytes()[:40])
    strict = tiny_recipe(tiny_models["idefics3"], data, tmp_path / "strict", output={"tensorboard": False})
    with pytest.raises(UserError, match=bad.name):
        train(config(strict), log=lambda *_: None)
    skip = tiny_recipe(tiny_models["idefics3"], data, tmp_path / "skip", data={"skip_bad_images": True},
                       output={"tensorboard": False})
    out = train(config(skip), log=lambda *_: None)
    record = json.loads((out / "metrics.json").read_text())
    assert [s["file"] for s in record["skipped_images"]] == [f"train/{bad.name}"]
    assert record["train_dataset"]["n_images"] == 15  # max_train_samples 16, one left out
