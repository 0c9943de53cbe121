"""The default LoRA targets are every linear layer of the language model, whatever the
architecture calls them (issue 30), and what an adapter's targets cover is said: in the log,
in metrics.json (``lora_coverage``) and, through them, in the model card."""

from __future__ import annotations

import json
import re

import pytest
import torch

from captioning.families import family_for_config
from captioning.lora_targets import collapse, coverage_text, exact_regex
from tests.training.helpers import config, tiny_recipe
from training.modeling import lora_coverage, setup_trainable
from training.train import train


def _lfm2_vl():
    """A tiny random LFM2-VL: one short-convolution layer and one attention layer, each with
    the w1/w2/w3 feed-forward; 12 language-model linear layers, 3 of them Llama-named."""
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    cfg = Lfm2VlConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_patches": 16, "patch_size": 4},
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "layer_types": ["conv", "full_attention"],
                     "max_position_embeddings": 64},
        projector_hidden_size=16, downsample_factor=2)
    torch.manual_seed(0)
    return Lfm2VlForConditionalGeneration(cfg)


def _glm4v():
    """A tiny random GLM-4V: two layers of q/k/v/o, the fused gate_up_proj and down_proj."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    cfg = Glm4vConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "depth": 1, "num_heads": 2, "out_hidden_size": 16,
                       "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "image_size": 16},
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                         "partial_rotary_factor": 0.5}})
    torch.manual_seed(0)
    return Glm4vForConditionalGeneration(cfg)


BUILD = {"lfm2_vl": _lfm2_vl, "glm4v": _glm4v}
LFM2_QKV = r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)"


def _cfg(tmp_path, **lora):
    from training.flags import build_config

    return build_config({"model": {"name_or_path": "unused"}, "data": {"source": str(tmp_path)},
                         "lora": {"r": 2, "alpha": 4, "dropout": 0.0, **lora}})


def _language_linear(model) -> set[str]:
    """Every nn.Linear under the language model (model.language_model), found here by path."""
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and n.startswith("model.language_model.")}


@pytest.mark.parametrize("arch", sorted(BUILD))
def test_default_targets_reach_every_language_model_linear_layer(arch, tmp_path):
    model = BUILD[arch]()
    family = family_for_config(model.config)
    language = _language_linear(model)
    assert len(language) == 12
    cfg = _cfg(tmp_path)
    peft_model = setup_trainable(model, family, cfg)
    # what peft wrapped: all 12, and nothing of the vision tower, the projector or lm_head
    assert set(peft_model.targeted_module_names) == language
    rx = re.compile(cfg.lora.target_modules)  # the resolved config records the targets
    assert {n for n in language if rx.fullmatch(n)} == language


@pytest.mark.parametrize("arch", sorted(BUILD))
def test_default_coverage_says_all_of_them(arch, tmp_path):
    model = BUILD[arch]()
    cov = lora_coverage(model, family_for_config(model.config), _cfg(tmp_path))
    assert cov == {"targeted": 12, "language_linear": 12, "left_out": [], "outside": [], "source": "derived"}
    assert coverage_text(cov) == "LoRA on 12 of 12 language-model linear layers"


def test_explicit_narrower_targets_are_allowed_and_say_what_they_leave_out(tmp_path):
    model = _lfm2_vl()
    family = family_for_config(model.config)
    cfg = _cfg(tmp_path, target_modules=LFM2_QKV)
    cov = lora_coverage(model, family, cfg)
    layers = "model.language_model.layers"
    assert cov == {"targeted": 3, "language_linear": 12, "source": "lora.target_modules", "outside": [],
                   "left_out": [f"{layers}.0.conv.in_proj", f"{layers}.0.conv.out_proj",
                                f"{layers}.*.feed_forward.w1", f"{layers}.*.feed_forward.w3",
                                f"{layers}.*.feed_forward.w2", f"{layers}.1.self_attn.out_proj"]}
    assert coverage_text(cov).startswith("LoRA on 3 of 12 language-model linear layers (lora.target_modules leaves "
                                         f"out: {layers}.0.conv.in_proj, ")
    peft_model = setup_trainable(model, family, cfg)  # allowed: the recipe asked for it
    assert len(peft_model.targeted_module_names) == 3 and cfg.lora.target_modules == LFM2_QKV


def test_bare_names_also_reaching_the_vision_tower_are_said(tmp_path):
    model = _lfm2_vl()
    cov = lora_coverage(model, family_for_config(model.config), _cfg(tmp_path, target_modules=["q_proj"]))
    assert cov["targeted"] == 1 and cov["outside"] == ["model.vision_tower.encoder.layers.0.self_attn.q_proj"]
    assert coverage_text(cov).endswith("; also on model.vision_tower.encoder.layers.0.self_attn.q_proj, outside the "
                                       "language model")


def test_a_family_regex_that_leaves_layers_out_is_said(tmp_path):
    from captioning.families.generic import GenericFamily

    class Narrow(GenericFamily):  # not registered: a family that keeps explicit targets
        lora_target_regex = LFM2_QKV

    model = _lfm2_vl()
    cov = lora_coverage(model, Narrow(), _cfg(tmp_path))
    assert cov["targeted"] == 3 and cov["source"] == "family"
    assert "(the narrow family's targets leave out: " in coverage_text(cov, "narrow")


def test_blip_targets_its_cross_attention_but_not_its_prediction_head(tiny_models):
    from captioning.families import get_family

    family = get_family("blip")
    model = family.model_class().from_pretrained(tiny_models["blip"])
    names = family.language_linear_names(model)
    assert any(".crossattention." in n for n in names) and any(".attention.self.query" in n for n in names)
    assert not any(n.startswith(("text_decoder.cls", "vision_model")) for n in names)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert set(linear) - set(names) == {n for n in linear if n.startswith(("text_decoder.cls.", "vision_model."))}


def test_exact_regex_and_collapse():
    names = [f"lm.layers.{i}.{p}" for i in range(3) for p in ("attn.q", "mlp.up")]
    universe = ["vision.layers.0.attn.q", *names, "lm.head"]
    rx = exact_regex(names, universe)
    assert rx == r"lm\.layers\.\d+\.(?:attn\.q|mlp\.up)"
    assert exact_regex(names[:-1], universe) is None  # layer 2's mlp.up left out: no regex says only these
    seq = ["lm.layers.0.ffn.0", "lm.layers.0.ffn.2", "lm.layers.1.ffn.0", "lm.layers.1.ffn.2", "lm.out.0"]
    assert exact_regex(seq, seq) == r"(?:lm\.layers\.\d+\.ffn\.(?:0|2)|lm\.out\.0)"
    assert collapse(names[:-1], names) == ["lm.layers.*.attn.q", "lm.layers.0.mlp.up", "lm.layers.1.mlp.up"]


def test_a_run_logs_and_records_its_coverage(tiny_models, shapes_dir, tmp_path):
    """A recipe's narrower targets train, and the log line and metrics.json say what they
    leave out; the default run's say all of them."""
    narrow = r"model\.text_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    said = {}
    for name, lora in (("narrow", {"target_modules": narrow}), ("default", {})):
        lines: list[str] = []
        out = train(config(tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / name, lora=lora,
                                       output={"tensorboard": False})), log=lines.append)
        said[name] = ([ln for ln in lines if ln.startswith("LoRA on ")],
                      json.loads((out / "metrics.json").read_text())["lora_coverage"])
    lines, cov = said["narrow"]
    assert cov["targeted"] == 4 and cov["language_linear"] == 14 and cov["source"] == "lora.target_modules"
    left = ("self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    assert cov["left_out"] == [f"model.text_model.layers.*.{p}" for p in left]
    assert lines == ["LoRA on 4 of 14 language-model linear layers (lora.target_modules leaves out: "
                     + ", ".join(cov["left_out"]) + ")"]
    lines, cov = said["default"]
    assert lines == ["LoRA on 14 of 14 language-model linear layers"]
    assert cov == {"targeted": 14, "language_linear": 14, "left_out": [], "outside": [], "source": "derived"}


def test_a_resumed_run_keeps_the_targets_its_checkpoint_recorded(tiny_models, shapes_dir, tmp_path):
    """A checkpoint written before the default targets were derived (its config holds the
    family's old regex) resumes with that regex, not the derived one (which a resume would
    refuse as a changed setting)."""
    import yaml

    from tests.training.helpers import merge

    old = r".*text_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    recipe = tiny_recipe(tiny_models["idefics3"], shapes_dir, tmp_path / "r",
                         output={"save_every_steps": 2, "tensorboard": False})
    out = train(config(recipe), log=lambda *_: None)
    saved = out / "checkpoints" / "train_config.yaml"
    doc = yaml.safe_load(saved.read_text())
    doc["lora"]["target_modules"] = old
    saved.write_text(yaml.safe_dump(doc, sort_keys=False))
    lines: list[str] = []
    train(config(merge(recipe, {"optim": {"max_steps": 4}})), resume=True, log=lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 4 and metrics["resumed"][-1]["changes"] == ["optim.max_steps: 2 -> 4"]
    assert yaml.safe_load((out / "train_config.yaml").read_text())["lora"]["target_modules"] == old
    assert "LoRA on 14 of 14 language-model linear layers" in lines
