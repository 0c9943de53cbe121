"""FLOPs of one greedy caption, counted from a model config (no model needed).

    from bench.caption_flops import caption_flops
    caption_flops(config, "idefics3", prompt_tokens=99, new_tokens=20)["total"]  # GFLOP

Conventions (one multiply-add = 2 FLOPs; biases, norms, activations, softmax,
rotary and embedding lookups are not counted: they are memory-bound work that a
GEMM-peak yardstick should expose, not hide):

Vision tower (SigLIP for idefics3, ViT for BLIP), per image, with P = (image/patch)^2
patches, S tokens (S = P for SigLIP, P + 1 with BLIP's [CLS]), hidden D, MLP width I:
    patch embedding   2 * P * (3 * patch^2) * D
    each layer        2 * S * (4 D^2 + 2 D I)          q, k, v, o and the two MLP matrices
                      + 2 * 2 * S^2 * D                  Q K^T and softmax(.) V over all heads
Idefics3 connector: pixel shuffle by s, then one matrix (D s^2 -> H) on P / s^2 tokens:
    2 * (P / s^2) * (D s^2) * H
Llama text model (idefics3), per token at context length c (heads nh, kv heads nkv,
head dim hd, MLP width Ii):
    2 * (H nh hd + 2 H nkv hd + nh hd H + 3 H Ii)    per layer (q, k, v, o, gate, up, down)
    + 2 * 2 * nh * hd * c                              attention over c positions (causal)
    the LM head 2 * H * V only for the last position of each forward pass
    (transformers' generate asks for logits_to_keep=1).
    Prefill covers the L prompt tokens (position i attends to i positions), then
    new_tokens - 1 decode steps of one token each (the prefill already yields token 1).
BLIP text decoder (BERT layers with cross-attention), unconditional captioning feeds
the bos token, then one token per step: new_tokens forward passes in all, each
    per layer 2 * (4 H^2 + 2 H^2 + 2 H I) + 2 * 2 * H * c + 2 * 2 * H * S
    (self-attn q k v o, cross-attn q o, MLP; self-attn over c, cross-attn over S image tokens)
    LM head 2 * (H^2 + H V) (transform + decoder)
    plus once per image: cross-attention keys and values of the S image tokens in every
    layer, 2 * 2 * S * E * H (E = the vision hidden size).
"""

from __future__ import annotations


def _get(cfg, name, default=None):
    value = getattr(cfg, name, None)
    return default if value is None else value


def _vit(vision, *, cls_token: bool) -> float:
    d, i, layers = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers
    patches = (vision.image_size // vision.patch_size) ** 2
    s = patches + (1 if cls_token else 0)
    channels = _get(vision, "num_channels", 3)
    embed = 2 * patches * channels * vision.patch_size ** 2 * d
    per_layer = 2 * s * (4 * d * d + 2 * d * i) + 2 * 2 * s * s * d
    return embed + layers * per_layer


def _llama_token(text, context: int) -> float:
    h, layers = text.hidden_size, text.num_hidden_layers
    nh = text.num_attention_heads
    nkv = _get(text, "num_key_value_heads", nh)
    hd = _get(text, "head_dim", h // nh)
    linear = 2 * (h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * text.intermediate_size)
    return layers * (linear + 2 * 2 * nh * hd * context)


def idefics3_flops(config, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """FLOPs per caption of an Idefics3 (SmolVLM) model, one image crop, by stage."""
    vision, text, s = config.vision_config, config.text_config, config.scale_factor
    patches = (vision.image_size // vision.patch_size) ** 2
    lm_head = 2 * text.hidden_size * text.vocab_size
    prefill = sum(_llama_token(text, c) for c in range(1, prompt_tokens + 1)) + lm_head
    decode = sum(_llama_token(text, prompt_tokens + k) + lm_head for k in range(1, new_tokens))
    return {
        "vision": _vit(vision, cls_token=False),
        "connector": 2 * (patches // s ** 2) * (vision.hidden_size * s ** 2) * text.hidden_size,
        "text_prefill": prefill,
        "text_decode": decode,
    }


def blip_flops(config, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """FLOPs per caption of a BLIP captioning model, by stage. ``prompt_tokens`` counts
    what the decoder is fed before the first new token (1: bos only, unconditional)."""
    vision, text = config.vision_config, config.text_config
    s = (vision.image_size // vision.patch_size) ** 2 + 1
    h, i, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    e = _get(text, "encoder_hidden_size", vision.hidden_size)

    def position(context: int) -> float:
        per_layer = 2 * (6 * h * h + 2 * h * i) + 2 * 2 * h * context + 2 * 2 * h * s
        return layers * per_layer

    lm_head = 2 * (h * h + h * text.vocab_size)
    prefill = sum(position(c) for c in range(1, prompt_tokens + 1)) + lm_head
    prefill += layers * 2 * 2 * s * e * h  # cross-attention K/V of the image tokens, once
    decode = sum(position(prompt_tokens + k) + lm_head for k in range(1, new_tokens))
    return {"vision": _vit(vision, cls_token=True), "connector": 0.0, "text_prefill": prefill,
            "text_decode": decode}


def caption_flops(config, family: str, *, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """GFLOP per caption by stage plus "total", for ``family`` in {"idefics3", "blip"}."""
    counters = {"idefics3": idefics3_flops, "blip": blip_flops}
    if family not in counters:
        raise ValueError(f"no FLOP formula for family {family!r} (have {', '.join(counters)})")
    parts = counters[family](config, prompt_tokens, new_tokens)
    out = {k: v / 1e9 for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out
