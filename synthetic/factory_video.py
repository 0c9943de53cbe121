"""Tiny random models of the image-and-video VLMs: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM2.

Their processors take a video processor too, and every video processor needs torchvision,
which this project does not install; the builders therefore make the processors through
:func:`captioning.processors.image_only` (same class name, so a saved folder names the real
processor class) and :func:`captioning.processors.load_processor` reloads them.

Each builder mirrors one published checkpoint: its architecture, special tokens, chat
template and generation_config token ids; only the sizes differ (and the vocabulary, a small
offline byte-level BPE with the checkpoint's special tokens kept whole). Tiny size only:
a 64 px image becomes 16 image tokens, the models build in a second or two and save to well
under 1 MB.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from captioning.errors import UserError
from captioning.processors import image_only
from synthetic.tokenizer import build_bpe_tokenizer

# Qwen/Qwen2-VL-2B-Instruct chat_template.json, verbatim (found in several public copies); Qwen/Qwen2.5-VL-3B-
# Instruct's chat_template.json is the same template, as far as could be checked offline (default system prompt
# "You are a helpful assistant."; the tool-calling template in its tokenizer_config.json is not the processor's).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The Qwen3-VL Instruct chat template (as shipped with Qwen3-VL-8B-Instruct; the 2B Instruct
# checkpoint ships the same one, as far as could be checked offline), verbatim: 5292 bytes, SHA-256 3636d0f0...,
# as a public test pins the Qwen3-VL-8B-Instruct GGUF's template. No default system
# prompt; tools and tool responses are supported; no <think> block for the Instruct models.
QWEN3_VL_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\
\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# HuggingFaceTB/SmolVLM2-256M-Video-Instruct's chat template, verbatim (the SmolVLM one plus <video>):
# <|im_start|>User:<image>instruction<end_of_utterance>\nAssistant: caption<end_of_utterance>\n
SMOLVLM2_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Qwen2 vocabulary special tokens, in the published id order (151643...)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_TOOL_TOKENS = ["<tool_call>", "</tool_call>"]  # Qwen2.5 vocabulary (added tokens, not special)
QWEN3_TOOL_TOKENS = QWEN_TOOL_TOKENS + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
SMOLVLM2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                    "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)] + [
                    "<end_of_utterance>"]

# Tiny vision geometry shared by the Qwen builders: 8 px patches merged 2x2, so a 64 px image is an
# 8x8 patch grid = 16 image tokens; min/max pixels (published 56*56 and 28*28*1280) keep every image
# between 2x2 and 4x4 merged tokens.
_PATCH, _MERGE = 8, 2
_MIN_PIXELS, _MAX_PIXELS = (2 * _PATCH * _MERGE) ** 2, 64 * 64


def _tiny_only(arch: str, size: str) -> None:
    if size != "tiny":
        raise UserError(f"--size {size}: the factory builds {arch} at tiny size only")


def _qwen_tokenizer(extra_tokens: list[str]):
    """Qwen2/Qwen3 tokenizer conventions: no bos token (none is added), eos <|im_end|> (Instruct),
    pad <|endoftext|>, no unk."""
    special = QWEN_SPECIAL + extra_tokens
    return build_bpe_tokenizer(400 + len(special), special=special, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                               unk=None)


def _qwen_ids(tok) -> dict[str, int]:
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def _qwen_generation_config(model, tok) -> None:
    # Qwen2-VL-2B / Qwen2.5-VL-3B / Qwen3-VL-2B Instruct generation_config.json token ids (from memory of the
    # published files, not re-checked offline):
    # bos = pad = <|endoftext|> (151643), eos = [<|im_end|>, <|endoftext|>] = [151645, 151643].
    # (Their sampling settings are not copied: tests and captioning decode greedily.)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.bos_token_id = eot
    model.generation_config.pad_token_id = eot
    model.generation_config.eos_token_id = [im_end, eot]


def _qwen_image_processor(mean=None, std=None):
    from transformers import Qwen2VLImageProcessorPil

    kw = {} if mean is None else {"image_mean": mean, "image_std": std}
    return Qwen2VLImageProcessorPil(min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS, patch_size=_PATCH,
                                    merge_size=_MERGE, temporal_patch_size=2, **kw)


# ------------------------------------------------------------------------ qwen2_vl
def _qwen2_vl(size: str, folder: Path):
    """Mirrors Qwen/Qwen2-VL-2B-Instruct (tied embeddings, M-RoPE, 2x2 patch merger, ChatML template
    with default system prompt). Differs in sizes only: text 64 wide x 2 layers (published 1536 x 28),
    vision 32 wide x 1 layer (1280 x 32), 8 px patches (14), mrope_section [2, 3, 3] for head_dim 16
    (published [16, 24, 24] for 128), and the small vocabulary."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    _tiny_only("qwen2_vl", size)
    tok = _qwen_tokenizer([])
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=eot, eos_token_id=im_end, tie_word_embeddings=True)
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=4, patch_size=_PATCH,
                  spatial_merge_size=_MERGE, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_qwen_ids(tok))
    model = Qwen2VLForConditionalGeneration(config)
    _qwen_generation_config(model, tok)
    processor = image_only(Qwen2VLProcessor)(image_processor=_qwen_image_processor(), tokenizer=tok,
                                             chat_template=QWEN2_VL_CHAT_TEMPLATE)
    return model, processor


# ---------------------------------------------------------------------- qwen2_5_vl
def _qwen2_5_vl(size: str, folder: Path):
    """Mirrors Qwen/Qwen2.5-VL-3B-Instruct (tied embeddings, M-RoPE with absolute time,
    window attention ViT with SwiGLU and RMSNorm, full attention in the last block, same chat
    template as Qwen2-VL). Differs in sizes only: text 64 x 2 layers (2048 x 36), vision 32 x 1 layer
    (1280 x 32, full-attention block [0] for [7, 15, 23, 31]), 8 px patches (14) with a 64 px window
    (112: 4x4 merged tokens in both), mrope_section [2, 3, 3] ([16, 24, 24]), the small vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    _tiny_only("qwen2_5_vl", size)
    tok = _qwen_tokenizer(QWEN_TOOL_TOKENS)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=eot, eos_token_id=im_end, tie_word_embeddings=True)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=_PATCH, spatial_merge_size=_MERGE, temporal_patch_size=2, tokens_per_second=2,
                  window_size=4 * _PATCH * _MERGE, fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_qwen_ids(tok))
    model = Qwen2_5_VLForConditionalGeneration(config)
    _qwen_generation_config(model, tok)
    processor = image_only(Qwen2_5_VLProcessor)(image_processor=_qwen_image_processor(), tokenizer=tok,
                                                chat_template=QWEN2_VL_CHAT_TEMPLATE)
    return model, processor


# ------------------------------------------------------------------------ qwen3_vl
def _qwen3_vl(size: str, folder: Path):
    """Mirrors Qwen/Qwen3-VL-2B-Instruct (tied embeddings, interleaved M-RoPE, ViT with learned
    position embeddings and DeepStack features fed to the first LM layers, image mean/std 0.5, chat
    template without a default system prompt). Differs in sizes only: text 64 x 2 layers, head_dim 16
    (2048 x 28, head_dim 128), vision 32 x 1 layer (1024 x 24) with DeepStack from block [0]
    ([5, 11, 17]), 8 px patches (16) and 8x8 position embeddings (48x48), mrope_section [4, 2, 2]
    ([24, 20, 20]), the small vocabulary."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    _tiny_only("qwen3_vl", size)
    tok = _qwen_tokenizer(QWEN3_TOOL_TOKENS)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=262144,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                    "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                bos_token_id=eot, eos_token_id=im_end, tie_word_embeddings=True)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=_PATCH, spatial_merge_size=_MERGE, temporal_patch_size=2,
                  num_position_embeddings=(64 // _PATCH) ** 2, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_qwen_ids(tok))
    model = Qwen3VLForConditionalGeneration(config)
    _qwen_generation_config(model, tok)
    ip = _qwen_image_processor(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    processor = image_only(Qwen3VLProcessor)(image_processor=ip, tokenizer=tok, chat_template=QWEN3_VL_CHAT_TEMPLATE)
    return model, processor


# ------------------------------------------------------------------------- smolvlm
def _smolvlm(size: str, folder: Path):
    """Mirrors HuggingFaceTB/SmolVLM2-256M-Video-Instruct (SigLIP-style ViT, pixel shuffle by 4,
    Llama LM with untied embeddings, the SmolVLM2 chat template). Differs in sizes only: 64 px images
    (512) in 4 px patches (16) so that pixel shuffle by 4 still gives 4x4 = 16 image tokens (64),
    no image splitting (published: split into 512 px crops), vision 32 x 1 layer (768 x 12),
    text 64 x 2 layers (576 x 30), the small vocabulary."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, SmolVLMProcessor

    _tiny_only("smolvlm", size)
    # SmolVLM2 tokenizer: bos <|im_start|>, eos <end_of_utterance>, pad <|im_end|>, unk <|endoftext|>
    tok = build_bpe_tokenizer(400 + len(SMOLVLM2_SPECIAL), special=SMOLVLM2_SPECIAL, bos="<|im_start|>",
                              eos="<end_of_utterance>", pad="<|im_end|>", unk="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<image>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>")}
    image, patch, scale = 64, 4, 4
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image, patch_size=patch)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-5,
                rope_theta=100000.0, tie_word_embeddings=False, bos_token_id=ids["<|im_start|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|im_end|>"])
    config = SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=scale, image_token_id=ids["<image>"],
                           pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False)
    model = SmolVLMForConditionalGeneration(config)
    # generation_config.json of SmolVLM2-256M-Video-Instruct (from memory, not re-checked offline): bos 1
    # (<|im_start|>), pad 2 (<|im_end|>), eos [2, 49279] (<|im_end|>, <end_of_utterance>)
    model.generation_config.bos_token_id = ids["<|im_start|>"]
    model.generation_config.pad_token_id = ids["<|im_end|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<end_of_utterance>"]]
    image_seq_len = (image // patch) ** 2 // scale ** 2
    ip = SmolVLMImageProcessorPil(size={"longest_edge": image}, max_image_size={"longest_edge": image},
                                  do_image_splitting=False, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = image_only(SmolVLMProcessor)(image_processor=ip, tokenizer=tok, image_seq_len=image_seq_len,
                                             chat_template=SMOLVLM2_CHAT_TEMPLATE)
    return model, processor


BUILDERS: dict[str, Callable] = {"qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl,
                                 "smolvlm": _smolvlm}
