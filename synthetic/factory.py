"""Random-model factory: randomly initialised models of each family, saved in the
normal Hugging Face layout that AutoProcessor and AutoModelForImageTextToText load.

    python -m synthetic.factory --family idefics3 --size tiny --out models/tiny-smolvlm
    python -m synthetic.factory --family blip --size real --out models/blip-base-random --params-only

(``python -m captioning.factory`` runs the same command.)

Sizes:
  tiny  well under 1 MB, builds in about a second: the tests.
  demo  a few MB, the full 64 px shapes image: the offline demo, where a model trained
        for a few minutes on 2 CPU cores must name the right shapes.
  real  the published architectures of SmolVLM-256M-Instruct and BLIP base
        (config values from their published configs, vocabulary sizes included),
        and for ``bridge`` DINOv2-large + Gemma-2-2B, for speed, memory and
        parameter-count benchmarks without downloading weights.
Tokenizers are built offline (synthetic/tokenizer.py: a small byte-level BPE for SmolVLM, a
word-piece vocab for BLIP), so real-size models keep the published vocabulary size in
their configs while their tokenizers know fewer tokens.

The other architectures the toolkit serves (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM2 in
synthetic/factory_video.py; Gemma 3, LLaVA-1.5, Idefics2, PaliGemma, Florence-2 in
synthetic/factory_chat.py) are built at tiny size only, with their published chat
templates and generation configs, for tests/test_architectures.py:

    python -m synthetic.factory --family qwen2_5_vl --out models/tiny-qwen2.5-vl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.cli import ArgumentParser, run_command
from captioning.errors import UserError
from captioning.files import output_lock, partial_folder, replace_folder
from captioning.options import add_options, option, option_values
from captioning.records import FACTORY, KIND_FACTORY, write_record
from synthetic import factory_chat, factory_video
from synthetic.tokenizer import build_bpe_tokenizer, build_wordpiece_tokenizer

SIZES = ("tiny", "demo", "real")

# SmolVLM's chat template (HuggingFaceTB/SmolVLM-*-Instruct), verbatim in behaviour:
# User:<image>instruction<end_of_utterance>\nAssistant: caption<end_of_utterance>\n
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# --------------------------------------------------------------------- idefics3
def _idefics3(size: str, folder: Path):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tok = build_bpe_tokenizer()
    if size in ("tiny", "demo"):
        # tiny: 48 px, 6x6 patches -> 3x3 image tokens after pixel shuffle. demo: the 64 px image
        # upscaled to 96 (nothing lost) so that 8 px patches (12x12) pixel-shuffle into 3x3 image
        # tokens, one per cell of the shapes grid: the k-th object named is then the k-th
        # occupied token, and the from-scratch model learns to read it in minutes.
        image, scale, v_hidden, v_layers, v_heads, t_hidden = ((48, 2, 32, 1, 2, 64) if size == "tiny"
                                                               else (96, 4, 64, 2, 4, 128))
        patch = 8
        vision = dict(hidden_size=v_hidden, intermediate_size=2 * v_hidden, num_hidden_layers=v_layers,
                      num_attention_heads=v_heads, image_size=image, patch_size=patch)
        text = dict(vocab_size=len(tok), hidden_size=t_hidden, intermediate_size=2 * t_hidden, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    tie_word_embeddings=False, rms_norm_eps=1e-5)
        longest, splitting = image, False
    else:  # HuggingFaceTB/SmolVLM-256M-Instruct config.json
        image, patch, scale = 512, 16, 4
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=image, patch_size=patch)
        text = dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
        longest, splitting = 4 * image, True  # the published processor: 4x512 longest edge, split into crops
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<image>", "<pad>", "<|im_start|>", "<end_of_utterance>")}
    text.update(pad_token_id=ids["<pad>"], bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
                model_type="llama")
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale,
                            image_token_id=ids["<image>"], pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config)
    image_seq_len = (image // patch) ** 2 // scale ** 2
    ip = Idefics3ImageProcessorPil(size={"longest_edge": longest}, max_image_size={"longest_edge": image},
                                   do_image_splitting=splitting)
    processor = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=image_seq_len,
                                  chat_template=SMOLVLM_CHAT_TEMPLATE)
    model.generation_config.eos_token_id = [ids["<end_of_utterance>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<|im_start|>"]
    return model, processor


# ------------------------------------------------------------------------- blip
def _blip(size: str, folder: Path):
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_wordpiece_tokenizer(Path(tmp))
    if size == "tiny":
        image, patch = 32, 8
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=image, patch_size=patch)
        text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64)
    elif size == "demo":
        image, patch = 96, 8  # as the idefics3 demo model: 64 px upscaled, 12x12 patches of 8 px
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=image, patch_size=patch)
        text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, encoder_hidden_size=64, max_position_embeddings=64)
    else:  # Salesforce/blip-image-captioning-base config.json
        image, patch = 384, 16
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=image, patch_size=patch)
        text = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, encoder_hidden_size=768, max_position_embeddings=512)
    bos = tok.convert_tokens_to_ids("[DEC]")
    text.update(bos_token_id=bos, pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id)
    config = BlipConfig(text_config=text, vision_config=vision)
    model = BlipForConditionalGeneration(config)
    # OpenAI CLIP normalisation, as the published BLIP processor
    ip = BlipImageProcessorPil(size={"height": image, "width": image}, image_mean=[0.48145466, 0.4578275, 0.40821073],
                               image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = BlipProcessor(image_processor=ip, tokenizer=tok)
    model.generation_config.bos_token_id = bos
    model.generation_config.eos_token_id = tok.sep_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


# ----------------------------------------------------------------------- bridge
def _bridge(size: str, folder: Path):
    """Frozen DINOv2-style backbone + frozen Llama/Gemma-2 LM + gated cross-attention bridge
    (model code in captioning/bridge, saved next to the weights as remote code)."""
    from transformers import BitImageProcessorPil

    from captioning.bridge import BridgeConfig, BridgeForConditionalGeneration, BridgeProcessor

    tok = build_bpe_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<pad>", "<|im_start|>", "<end_of_utterance>")}
    special = dict(pad_token_id=ids["<pad>"], bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"])
    if size in ("tiny", "demo"):
        # tiny: 48 px, patch 8: 6x6 patches, so each cell of the shapes 3x3 grid is 2x2 patches;
        # demo: as the idefics3 demo model, the 64 px image upscaled to 96: 12x12 patches of 8 px
        image, v_hidden, v_layers, v_heads, t_hidden = (48, 32, 1, 2, 64) if size == "tiny" else (96, 64, 2, 4, 128)
        crop = image
        vision = dict(model_type="dinov2", hidden_size=v_hidden, intermediate_size=2 * v_hidden, mlp_ratio=2,
                      num_hidden_layers=v_layers, num_attention_heads=v_heads, image_size=image, patch_size=8)
        text = dict(model_type="llama", vocab_size=len(tok), hidden_size=t_hidden, intermediate_size=2 * t_hidden,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, **special)  # tied, as Gemma-2
        bridge = dict(cross_attention_layers=[0, 1], bridge_hidden_size=v_hidden, bridge_num_heads=v_heads,
                      bridge_ffn_mult=1.0)
    else:
        # facebook/dinov2-large config.json; its processor: shortest edge 256, centre crop 224
        image, crop = 256, 224
        vision = dict(model_type="dinov2", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
                      hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False)
        # google/gemma-2-2b config.json (vocabulary size as published; the offline tokenizer knows fewer)
        text = dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                    rope_theta=10000.0, attention_bias=False, attn_logit_softcapping=50.0,
                    final_logit_softcapping=30.0, query_pre_attn_scalar=256, sliding_window=4096,
                    tie_word_embeddings=True, **special)
        # ~2% of the parameters train: 5 blocks spread over the 26 layers, attention at width 1024
        bridge = dict(bridge_depth=5, bridge_attach="spread", bridge_hidden_size=1024, bridge_num_heads=16,
                      bridge_ffn_mult=0.5)
    config = BridgeConfig(vision_config=vision, text_config=text, **bridge)
    model = BridgeForConditionalGeneration(config)
    ip = BitImageProcessorPil(size={"shortest_edge": image}, crop_size={"height": crop, "width": crop},
                              image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # ImageNet, as DINOv2
    processor = BridgeProcessor(image_processor=ip, tokenizer=tok)
    model.generation_config.eos_token_id = special["eos_token_id"]
    model.generation_config.pad_token_id = special["pad_token_id"]
    model.generation_config.bos_token_id = special["bos_token_id"]
    return model, processor


BUILDERS: dict[str, Callable] = {"idefics3": _idefics3, "blip": _blip, "bridge": _bridge}


def builders() -> dict[str, Callable]:
    """Every architecture the factory builds: the three above at every size, and the tiny
    VLMs of synthetic.factory_video (Qwen-VL, SmolVLM2) and synthetic.factory_chat (Gemma 3,
    LLaVA, Idefics2, PaliGemma, Florence-2)."""
    return {**BUILDERS, **factory_video.BUILDERS, **factory_chat.BUILDERS}


def build_model(arch: str, size: str = "tiny", *, seed: int = 0):
    """Randomly initialised (model, processor) of ``arch`` (an architecture of
    :func:`builders`: idefics3, blip, bridge, qwen2_vl, gemma3, ...) at ``size``, in memory."""
    import torch

    every = builders()
    if arch not in every:
        raise UserError(f"--family {arch!r}: the factory builds {', '.join(sorted(every))}")
    if size not in SIZES:
        raise UserError(f"--size {size!r}: choose {', '.join(SIZES)}")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        return every[arch](size, Path(tmp))


def build_random_model(arch: str, out: str | Path, size: str = "tiny", *, seed: int = 0) -> Path:
    """Build and save a random model + processor to ``out``; returns the folder."""
    model, processor = build_model(arch, size, seed=seed)
    return save_random_model(model, processor, out, arch=arch, size=size, seed=seed)


def save_random_model(model, processor, out: str | Path, *, arch: str, size: str, seed: int) -> Path:
    """Save a model from :func:`build_model` with its processor and the record saying how it was
    made (records.FACTORY: the family that serves it, the architecture, size and seed), so later
    stages (the Space's badge, the card) know the weights are untrained."""
    from captioning.families import family_for_config

    out = Path(out)
    # assembled beside it and moved in whole: a folder cut off mid-save never looks complete
    with partial_folder(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_record(tmp / FACTORY, KIND_FACTORY, {"family": family_for_config(model.config).name, "arch": arch,
                                                   "size": size, "seed": seed})
        replace_folder(tmp, out)
    return out


def count_parameters(model, family=None) -> dict[str, Any]:
    """Parameter counts: unique tensors, plus tied ones counted again (how BLIP's
    published 247M is counted), split into vision / connector / language."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), p.numel())
    unique = sum(seen.values())
    with_tied = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    out: dict[str, Any] = {"total": unique, "total_counting_tied": with_tied}
    if family is not None:
        params = dict(model.named_parameters())
        for group, names in family.parameter_groups(model).items():
            out[group] = sum(params[n].numel() for n in names)
    return out


@dataclass
class FactoryOptions:
    """What ``python -m synthetic.factory`` builds; its flags are these fields (captioning.options)."""

    family: str = option(help="architecture: %(choices)s (all but idefics3, blip and bridge: tiny only)",
                         choices=sorted(builders()), metavar="ARCH")
    size: str = option("tiny", help="tiny (tests), demo (the shapes demo) or real (the published shapes)",
                       choices=SIZES)
    out: str | None = option(None, help="folder to save into (required unless --params-only)")
    seed: int = option(0, help="seeds the random weights (0 to 2**32 - 1)")
    params_only: bool = option(False, help="build in memory and print parameter counts")
    force: bool = option(False, help="replace an --out folder that holds files this command did not write")

    def __post_init__(self):
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be from 0 to 2**32 - 1 (got {self.seed})")
        if not self.params_only and not self.out:
            raise UserError("--out is required (or pass --params-only)")
        out = Path(self.out).expanduser() if self.out else None
        if (out is not None and not self.params_only and not self.force and out.is_dir() and any(out.iterdir())
                and not (out / FACTORY).is_file()):  # a trained model or adapter would be replaced whole
            raise UserError(f"--out {out} is not empty and holds no {FACTORY} (captioning.factory did not write it): "
                            "pass --force to replace it, or choose a new folder")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m synthetic.factory", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, FactoryOptions)

    def run(args: argparse.Namespace) -> None:
        import torch

        from captioning.families import family_for_config

        o = FactoryOptions(**option_values(FactoryOptions, args))
        if o.params_only:  # meta tensors: real-size counts in a second, no memory
            with torch.device("meta"):
                model, processor = build_model(o.family, o.size, seed=o.seed)
        else:
            model, processor = build_model(o.family, o.size, seed=o.seed)
        counts = count_parameters(model, family_for_config(model.config))
        print(" ".join(f"{k}={v / 1e6:.2f}M" for k, v in counts.items()))
        if not o.params_only:
            with output_lock(o.out, "--out") as out:
                save_random_model(model, processor, out, arch=o.family, size=o.size, seed=o.seed)
            print(f"saved {o.size} {o.family} to {out}")

    return run_command(parser, argv, run)


if __name__ == "__main__":
    sys.exit(main())
