"""Tiny random builders for five more image-captioning architectures, offline.

    from synthetic.factory_chat import BUILDERS
    model, processor = BUILDERS["gemma3"]("tiny", folder)

Each builder mirrors one published checkpoint in everything the toolkit's code sees
(chat template, special tokens and how the processor places them, generation config
eos/pad/bos, side tensors) and differs only in sizes: a few-hundred-token byte-level
BPE instead of the published vocabulary (special tokens have other ids: the configs
carry the ids of *this* tokenizer), tiny towers, small images and few image tokens.
Only ``tiny`` is built; every model builds in about a second and saves well under 5 MB.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from captioning.errors import UserError
from synthetic.tokenizer import build_bpe_tokenizer

# google/gemma-3-4b-it chat_template (tokenizer_config.json / chat_template.json), verbatim:
# <bos><start_of_turn>user\n<start_of_image>text<end_of_turn>\n<start_of_turn>model\n
# It starts with {{ bos_token }} while the Gemma tokenizer also adds <bos>: rendering then
# tokenizing with add_special_tokens=True gives two BOS tokens (kept: a published quirk).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# llava-hf/llava-1.5-7b-hf chat_template.json, verbatim: "USER: <image>\ntext ASSISTANT:".
# Published quirks kept: no BOS in the template (the Llama tokenizer adds it), text turns end
# with a space, and an assistant turn renders "ASSISTANT: caption " with no </s> after it.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# HuggingFaceM4/idefics2-8b processor chat_template, verbatim:
# "User:<image>text<end_of_utterance>\nAssistant: caption<end_of_utterance>\n" (no BOS in the
# template: the Mistral tokenizer adds it; "Assistant:" has no trailing space, answers bring their own).
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Florence-2's tokens (added by the original processor, kept by the transformers-native checkpoint)
FLORENCE2_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)] + [
    "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>", "</seg>",
    "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>", "</region_to_desciption>", "<proposal>",
    "</proposal>", "<poly>", "</poly>", "<and>"])

_BPE_MERGES = 400  # learned tokens on top of the specials (build_bpe_tokenizer's vocab_size counts specials)
SIGLIP_NORM = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
CLIP_NORM = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
IMAGENET_NORM = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def _tiny_only(arch: str, size: str) -> None:
    if size != "tiny":
        raise UserError(f"--size {size}: the factory builds {arch} at tiny size only")


def _ids(tok, *tokens: str) -> dict[str, int]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in tokens}
    unknown = [t for t, i in ids.items() if i is None or i == tok.unk_token_id and t != tok.unk_token]
    assert not unknown, f"tokens not in the tokenizer: {unknown}"
    return ids


def _generation(model, *, eos, pad, bos) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = bos


# ----------------------------------------------------------------------- gemma3
def _gemma3(size: str, folder: Path):
    """google/gemma-3-4b-it: SigLIP (896 px, patch 14, 4096 patches avg-pooled to 256 tokens) + Gemma-3 LM.
    Tiny: SigLIP 32 px, patch 8 (4x4 patches) pooled to mm_tokens_per_image=4; LM hidden 32, 2 layers.
    Same template, specials, <bos> added by the tokenizer, eos [<eos>, <end_of_turn>] as published."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    _tiny_only("gemma3", size)
    # Gemma's fixed ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3 (the order here gives the same ids)
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"]
    tok = build_bpe_tokenizer(len(special) + _BPE_MERGES, special=special, bos="<bos>", eos="<eos>", pad="<pad>",
                              unk="<unk>", add_bos_token=True,
                              extra_special_tokens={"image_token": "<image_soft_token>",
                                                    "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    ids = _ids(tok, *special)
    image, patch, tokens_per_image = 32, 8, 4
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image, patch_size=patch, vision_use_head=False)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=512, sliding_window=64,
                query_pre_attn_scalar=16, pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                eos_token_id=ids["<eos>"])
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"], pad_token_id=ids["<pad>"],
                          bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projector's weight to zeros, so a random Gemma 3 is blind: every
    # image gives the same caption. Random values let the tests see images reach the logits.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    ip = Gemma3ImageProcessorPil(size={"height": image, "width": image}, resample=2, do_pan_and_scan=False,
                                 **SIGLIP_NORM)  # bilinear, as published
    processor = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=tokens_per_image,
                                chat_template=GEMMA3_CHAT_TEMPLATE)
    # published generation_config.json: bos 2, eos [1, 106], pad 0 (plus do_sample/top_k 64/top_p 0.95, not copied)
    _generation(model, eos=[ids["<eos>"], ids["<end_of_turn>"]], pad=ids["<pad>"], bos=ids["<bos>"])
    return model, processor


# ------------------------------------------------------------------------ llava
def _llava(size: str, folder: Path):
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (576 patch tokens, CLS dropped, layer -2) + 2-layer GELU
    projector + Vicuna/Llama. Tiny: CLIP 32 px, patch 8 -> 16 image tokens; Llama hidden 32, 2 layers.
    Same template, specials (<image>, <pad> added after the vocabulary), <s> added by the tokenizer."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    _tiny_only("llava", size)
    special = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]  # Llama: <unk> 0, <s> 1, </s> 2
    tok = build_bpe_tokenizer(len(special) + _BPE_MERGES, special=special, bos="<s>", eos="</s>", pad="<pad>",
                              unk="<unk>", add_bos_token=True, extra_special_tokens={"image_token": "<image>"})
    ids = _ids(tok, *special)
    image, patch = 32, 8
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image, patch_size=patch, projection_dim=32)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", pad_token_id=ids["<pad>"])
    model = LlavaForConditionalGeneration(config)
    # the published preprocessor_config.json is a CLIPImageProcessor: shortest edge, centre crop, bicubic
    ip = CLIPImageProcessorPil(size={"shortest_edge": image}, crop_size={"height": image, "width": image},
                               resample=3, **CLIP_NORM)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, num_additional_image_tokens=1,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE)
    # published generation_config.json: bos 1, eos 2, pad 32001 (<pad>)
    _generation(model, eos=ids["</s>"], pad=ids["<pad>"], bos=ids["<s>"])
    return model, processor


# --------------------------------------------------------------------- idefics2
def _idefics2(size: str, folder: Path):
    """HuggingFaceM4/idefics2-8b: SigLIP-so400m (980 px, patch 14) + perceiver resampler (64 latents) + Mistral-7B.
    Tiny: SigLIP 32 px, patch 8, perceiver 4 latents -> 4 image tokens, no image splitting; Mistral hidden 32.
    Same template, specials (<fake_token_around_image>, <image>, <end_of_utterance> after the vocabulary),
    <s> added by the tokenizer, pad <unk>."""
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
    )

    _tiny_only("idefics2", size)
    special = ["<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    tok = build_bpe_tokenizer(len(special) + _BPE_MERGES, special=special, bos="<s>", eos="</s>", pad="<unk>",
                              unk="<unk>", add_bos_token=True)
    ids = _ids(tok, *special)
    image, patch, latents = 32, 8, 4
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image, patch_size=patch)
    perceiver = dict(hidden_size=32, rms_norm_eps=1e-5, hidden_act="silu", resampler_n_latents=latents,
                     resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1)
    text = dict(model_type="mistral", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, rms_norm_eps=1e-5,
                sliding_window=None, pad_token_id=ids["<unk>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
    config = Idefics2Config(vision_config=vision, perceiver_config=perceiver, text_config=text,
                            image_token_id=ids["<image>"], tie_word_embeddings=False)
    model = Idefics2ForConditionalGeneration(config)
    ip = Idefics2ImageProcessorPil(size={"shortest_edge": image, "longest_edge": image}, do_image_splitting=False,
                                   **SIGLIP_NORM)
    processor = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=latents,
                                  chat_template=IDEFICS2_CHAT_TEMPLATE)
    # generation_config.json as published for idefics2-8b (read from a fine-tune that inherits it):
    # bos 1, eos [2, 32002] (</s>, <end_of_utterance>), pad 0 (<unk>), bad_words_ids [[32000], [32001]]
    _generation(model, eos=[ids["</s>"], ids["<end_of_utterance>"]], pad=ids["<unk>"], bos=ids["<s>"])
    model.generation_config.bad_words_ids = [[ids["<fake_token_around_image>"]], [ids["<image>"]]]
    return model, processor


# -------------------------------------------------------------------- paligemma
def _paligemma(size: str, folder: Path):
    """google/paligemma2-3b-pt-224: SigLIP-so400m (224 px, patch 14 -> 256 image tokens) + Gemma-2-2B, no chat
    template: the processor builds "<image>*N<bos>prefix\\n" and appends "suffix<eos>" as the answer, with
    token_type_ids 0 (prefix) / 1 (suffix) and labels -100 over the prefix. Tiny: SigLIP 32 px, patch 8 ->
    16 image tokens; Gemma-2 hidden 32, 2 layers. The processor adds <image> and 1024 <locNNNN> + 128
    <segNNN> tokens itself: the vocabulary is sized from the tokenizer after that."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    _tiny_only("paligemma", size)
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
    tok = build_bpe_tokenizer(len(special) + _BPE_MERGES, special=special, bos="<bos>", eos="<eos>", pad="<pad>",
                              unk="<unk>", add_bos_token=True, extra_special_tokens={"image_token": "<image>"})
    image, patch = 32, 8
    tokens_per_image = (image // patch) ** 2
    ip = SiglipImageProcessorPil(size={"height": image, "width": image}, resample=3, image_seq_length=tokens_per_image,
                                 **SIGLIP_NORM)
    processor = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds the <loc>/<seg> tokens, drops add_bos
    tok = processor.tokenizer
    ids = _ids(tok, *special)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image, patch_size=patch, projection_dim=32)
    text = dict(model_type="gemma2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                sliding_window=64, query_pre_attn_scalar=16, pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                eos_token_id=ids["<eos>"])
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                             projection_dim=32, hidden_size=32, pad_token_id=ids["<pad>"],
                             bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"])
    model = PaliGemmaForConditionalGeneration(config)
    # published generation_config.json: bos 2, eos 1, pad 0
    _generation(model, eos=ids["<eos>"], pad=ids["<pad>"], bos=ids["<bos>"])
    return model, processor


# -------------------------------------------------------------------- florence2
def _florence2(size: str, folder: Path):
    """florence-community/Florence-2-base (the transformers-native conversion of microsoft/Florence-2-base):
    DaViT (4 stages, 768 px, stride 32 -> 24x24 + 1 = 577 image tokens) + BART encoder-decoder (6+6 layers,
    d_model 768). Tiny: DaViT 4 stages of depth 1, widths 8-32, 64 px -> 2x2 + 1 = 5 image tokens; BART d_model
    32, 1+1 layers. Same BART specials (<s> 0, <pad> 1, </s> 2, <unk> 3), the task/<loc_N> tokens and <image>;
    the tokenizer wraps text as <s> text </s>; decoder_start_token_id </s> as published."""
    from transformers import (
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    _tiny_only("florence2", size)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *FLORENCE2_TOKENS, "<image>"]
    tok = build_bpe_tokenizer(len(special) + _BPE_MERGES, special=special, bos="<s>", eos="</s>", pad="<pad>",
                              unk="<unk>", add_bos_token=True, add_eos_token=True,
                              extra_special_tokens={"image_token": "<image>"})
    ids = _ids(tok, "<s>", "<pad>", "</s>", "<unk>", "<image>")
    image = 64
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 24, 32], num_heads=[1, 1, 1, 2], num_groups=[1, 1, 1, 2],
                  window_size=2, projection_dim=32, max_position_embeddings=8, drop_path_rate=0.0)
    tokens_per_image = (image // 32) ** 2 + 1  # strides 4*2*2*2, plus the pooled global token
    text = dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=256, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                eos_token_id=ids["</s>"], decoder_start_token_id=ids["</s>"], forced_eos_token_id=ids["</s>"])
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=ids["<image>"],
                             pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                             decoder_start_token_id=ids["</s>"])
    model = Florence2ForConditionalGeneration(config)
    ip = CLIPImageProcessorPil(size={"height": image, "width": image}, do_center_crop=False, resample=3,
                               image_seq_length=tokens_per_image, **IMAGENET_NORM)
    processor = Florence2Processor(image_processor=ip, tokenizer=tok)
    _generation(model, eos=ids["</s>"], pad=ids["<pad>"], bos=ids["<s>"])
    model.generation_config.decoder_start_token_id = ids["</s>"]
    return model, processor


BUILDERS: dict[str, Callable] = {"gemma3": _gemma3, "llava": _llava, "idefics2": _idefics2,
                                 "paligemma": _paligemma, "florence2": _florence2}
