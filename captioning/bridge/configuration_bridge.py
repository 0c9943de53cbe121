"""Configuration of the vision-language bridge: a frozen vision backbone and a frozen
causal language model joined by trainable gated cross-attention blocks.

This file is copied next to the weights by ``save_pretrained`` (see ``auto_map``), so it
imports only transformers: it must run from a Hub repo with ``trust_remote_code=True``
under transformers 5 and 4.57.
"""

from __future__ import annotations

import copy
import math

from transformers import AutoConfig, PretrainedConfig

#: the names under which save_pretrained's auto_map lets the Auto classes find this code.
#: transformers 5 loads through AutoModelForImageTextToText; 4.x also through AutoModelForVision2Seq.
AUTO_MAP = {
    "AutoConfig": "configuration_bridge.BridgeConfig",
    "AutoModel": "modeling_bridge.BridgeForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_bridge.BridgeForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_bridge.BridgeForConditionalGeneration",
    "AutoProcessor": "processing_bridge.BridgeProcessor",
}

ATTACH_MODES = ("spread", "first", "last")

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json): the small default language model.
_DEFAULT_TEXT = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_act="silu",
                     max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                     tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
# facebook/dinov2-small: the default backbone when none is given.
_DEFAULT_VISION = dict(model_type="dinov2", hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6)

#: full dual-tower configs whose vision half is the backbone (CLIP/SigLIP checkpoints ship both towers)
_VISION_HALF = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "siglip2": "siglip2_vision_model"}


def _sub_config(value, default: dict) -> PretrainedConfig:
    """A dict (with ``model_type``), a config object, or None (the default) -> a config object."""
    if value is None:
        value = dict(default)
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None)
        if model_type is None:
            raise ValueError("a bridge sub-config dict needs a 'model_type' (e.g. 'dinov2', 'llama')")
        value = AutoConfig.for_model(model_type, **value)
    if not isinstance(value, PretrainedConfig):
        raise TypeError(f"expected a config or a dict, got {type(value).__name__}")
    return value


class BridgeConfig(PretrainedConfig):
    r"""
    Args:
        vision_config: the backbone's config (dict with ``model_type`` or a config object). Any
            vision model ``AutoModel`` builds: DINOv2 (default), SigLIP / CLIP vision towers (a full
            CLIP/SigLIP config is reduced to its vision half).
        text_config: the causal language model's config (anything ``AutoModelForCausalLM`` builds:
            Llama/SmolLM2 (default: SmolLM2-135M's shape), Gemma-2, ...).
        vision_model_name_or_path / text_model_name_or_path: where the frozen weights came from
            (provenance only; the checkpoint holds the weights).
        bridge_depth: number of gated cross-attention blocks (default: a quarter of the LM layers).
        bridge_attach: where the blocks go when ``cross_attention_layers`` is not given:
            ``spread`` (evenly, starting at layer 0: every k-th layer), ``first`` or ``last`` N layers.
        cross_attention_layers: explicit LM layer indices; each gets a block run right before it.
        bridge_hidden_size: width of the projected image features and of the attention inside the
            blocks (default: the LM hidden size).
        bridge_num_heads: attention heads in each block.
        bridge_ffn_mult: hidden size of each block's gated feed-forward, as a multiple of the LM
            hidden size (0: attention only).
        vision_feature_layer: backbone hidden state to read (-1: the final, normalised output).
        bridge_dropout: dropout on the attention weights and the feed-forward (training only).
    """

    model_type = "bridge"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(self, vision_config=None, text_config=None, vision_model_name_or_path=None,
                 text_model_name_or_path=None, bridge_depth=None, bridge_attach="spread",
                 cross_attention_layers=None, bridge_hidden_size=None, bridge_num_heads=8, bridge_ffn_mult=1.0,
                 vision_feature_layer=-1, bridge_dropout=0.0, initializer_range=0.02, **kwargs):
        vision_config = _sub_config(vision_config, _DEFAULT_VISION)
        if vision_config.model_type in _VISION_HALF:
            vision_config = vision_config.vision_config
        text_config = _sub_config(text_config, _DEFAULT_TEXT)
        self.vision_config = vision_config
        self.text_config = text_config
        self.vision_model_name_or_path = vision_model_name_or_path
        self.text_model_name_or_path = text_model_name_or_path

        n_layers = text_config.num_hidden_layers
        if cross_attention_layers is None:
            depth = bridge_depth if bridge_depth is not None else max(1, math.ceil(n_layers / 4))
            if not 1 <= depth <= n_layers:
                raise ValueError(f"bridge_depth {depth}: must be between 1 and the {n_layers} LM layers")
            if bridge_attach not in ATTACH_MODES:
                raise ValueError(f"bridge_attach {bridge_attach!r}: choose one of {', '.join(ATTACH_MODES)}")
            if bridge_attach == "first":
                cross_attention_layers = list(range(depth))
            elif bridge_attach == "last":
                cross_attention_layers = list(range(n_layers - depth, n_layers))
            else:
                cross_attention_layers = [i * n_layers // depth for i in range(depth)]
        cross_attention_layers = sorted({int(i) for i in cross_attention_layers})
        if not cross_attention_layers or not all(0 <= i < n_layers for i in cross_attention_layers):
            raise ValueError(f"cross_attention_layers {cross_attention_layers}: need indices in [0, {n_layers})")
        self.cross_attention_layers = cross_attention_layers
        self.bridge_depth = len(cross_attention_layers)
        self.bridge_attach = bridge_attach

        self.bridge_hidden_size = int(bridge_hidden_size or text_config.hidden_size)
        self.bridge_num_heads = int(bridge_num_heads)
        if self.bridge_hidden_size % self.bridge_num_heads:
            raise ValueError(f"bridge_hidden_size {self.bridge_hidden_size} is not divisible by "
                             f"bridge_num_heads {self.bridge_num_heads}")
        self.bridge_ffn_mult = float(bridge_ffn_mult)
        self.vision_feature_layer = int(vision_feature_layer)
        self.bridge_dropout = float(bridge_dropout)
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)  # the LM ties its own embeddings if its config says so
        kwargs.setdefault("auto_map", copy.deepcopy(AUTO_MAP))
        super().__init__(**kwargs)


__all__ = ["BridgeConfig"]
