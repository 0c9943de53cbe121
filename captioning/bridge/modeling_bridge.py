"""The vision-language bridge: a frozen vision backbone (DINOv2 by default; SigLIP or CLIP
vision towers too) and a frozen causal language model (Llama/SmolLM2, Gemma-2, ...) joined by
trainable gated cross-attention blocks (Flamingo-style ``tanh`` gates, zero at init).

    model = AutoModelForImageTextToText.from_pretrained(folder_or_repo, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder_or_repo, trust_remote_code=True)
    inputs = processor(images=image, return_tensors="pt")      # the default prompt
    out = model.generate(**inputs, max_new_tokens=30)
    caption = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

How it works:
- The backbone's last hidden states go through a small projector into ``image_embeds``;
  each cross-attention block turns them into its own keys and values (the ``image_context``).
- A block runs right before each LM layer listed in ``config.cross_attention_layers`` (a
  forward pre-hook on that decoder layer): the text hidden states attend to the image
  context, and the result is added through ``tanh(gate)``. Gates start at 0, so an
  untrained bridge leaves the LM's outputs exactly unchanged. The LM's own causal
  self-attention, padding mask, positions and KV cache are untouched, and its parameter
  names stay those of the original checkpoint (LoRA targets and weights carry over).
- ``generate`` computes the image context once per call and passes it to every decode
  step as a model input; ``GenerationMixin`` expands it with beams / multiple samples like
  any other batch tensor. No hand-written decode loop.
- The backbone and the LM are frozen when the model is built (``requires_grad=False``):
  only ``bridge.*`` trains unless a training script unfreezes more.

The checkpoint holds all weights (backbone, LM and bridge) in one safetensors file set, so a
release is self-contained; ``vision_model_name_or_path`` / ``text_model_name_or_path`` in the
config only record where the frozen parts came from.

This file is copied next to the weights by ``save_pretrained``: it imports only torch and
transformers and runs under transformers 5 and 4.57.
"""

from __future__ import annotations

import threading

import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from .configuration_bridge import BridgeConfig

_TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5


class BridgeProjector(nn.Module):
    """Backbone features -> bridge width (LayerNorm + 2-layer MLP, as LLaVA's projector)."""

    def __init__(self, vision_hidden: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(vision_hidden)
        self.fc1 = nn.Linear(vision_hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(feats))))


class GatedCrossAttentionBlock(nn.Module):
    """Text hidden states attend to the image context; added back through tanh gates.

    No mask is needed: every image token is valid, and each text position reads only the
    image (never other text positions), so causality and padding stay the LM's business.
    """

    def __init__(self, config: BridgeConfig):
        super().__init__()
        d = config.text_config.hidden_size
        h = config.bridge_hidden_size
        self.num_heads = config.bridge_num_heads
        self.head_dim = h // self.num_heads
        self.dropout = config.bridge_dropout
        self.attn_norm = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, d, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        ffn = int(round(config.bridge_ffn_mult * d))
        if ffn > 0:
            self.ffn_norm = nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(self.dropout), nn.Linear(ffn, d))
            self.ffn_gate = nn.Parameter(torch.zeros(1))
        else:
            self.ffn = None

    def image_context(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Keys and values for ``image_embeds`` [B, N, h]: [B, 2, heads, N, head_dim]."""
        b, n, _ = image_embeds.shape
        k = self.k_proj(image_embeds).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(image_embeds).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        return torch.stack([k, v], dim=1)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if context.shape[0] != hidden.shape[0]:
            raise ValueError(f"image context for {context.shape[0]} sequences but {hidden.shape[0]} text sequences: "
                             "pass one image per text sequence")
        b, t, _ = hidden.shape
        context = context.to(hidden.dtype)
        q = self.q_proj(self.attn_norm(hidden)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, context[:, 0], context[:, 1],
                                              dropout_p=self.dropout if self.training else 0.0)
        hidden = hidden + torch.tanh(self.attn_gate) * self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        if self.ffn is not None:
            hidden = hidden + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(hidden))
        return hidden


class BridgeModule(nn.Module):
    """Everything that trains: the projector and one block per attach point."""

    def __init__(self, config: BridgeConfig):
        super().__init__()
        self.projector = BridgeProjector(config.vision_config.hidden_size, config.bridge_hidden_size)
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(config) for _ in config.cross_attention_layers)

    def image_context(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Per-block keys/values: [B, n_blocks, 2, heads, N, head_dim] (one tensor, so
        generate() can carry it between steps and expand it for beams like input_ids)."""
        return torch.stack([blk.image_context(image_embeds) for blk in self.blocks], dim=1)


class _ContextSlot:
    """The image context of the forward in progress, read by the decoder-layer hooks.

    Per thread, so concurrent forwards on one model (a server) never read each other's
    images. Deep copies and pickles start empty."""

    def __init__(self):
        self._local = threading.local()

    @property
    def value(self) -> torch.Tensor | None:
        return getattr(self._local, "value", None)

    @value.setter
    def value(self, context: torch.Tensor | None) -> None:
        self._local.value = context

    def __deepcopy__(self, memo):
        return _ContextSlot()

    def __reduce__(self):
        return _ContextSlot, ()


class _CrossAttentionHook:
    """Forward pre-hook on one LM decoder layer: run bridge block ``index`` on its input.

    The block is looked up through the model at call time (``owner.bridge.blocks``), not
    held: PEFT's modules_to_save swaps ``model.bridge`` for a wrapper holding a trained copy,
    and the hook must run that copy.
    """

    def __init__(self, owner: BridgeForConditionalGeneration, index: int):
        self.owner, self.index = owner, index

    def __call__(self, module, args, kwargs):
        ctx = self.owner._bridge_slot.value
        if ctx is None:  # no image: the bare LM
            return None
        block = self.owner.bridge.blocks[self.index]
        if args:
            return (block(args[0], ctx[:, self.index]), *args[1:]), kwargs
        kwargs["hidden_states"] = block(kwargs["hidden_states"], ctx[:, self.index])
        return args, kwargs


class BridgePreTrainedModel(PreTrainedModel):
    config_class = BridgeConfig
    base_model_prefix = "bridge_model"  # no such attribute: the model is its own base
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GatedCrossAttentionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        # Only bridge modules reach here: the backbone and the LM are PreTrainedModels that
        # initialise themselves.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, GatedCrossAttentionBlock):
            # zero gates: the untrained bridge leaves the language model unchanged
            nn.init.zeros_(module.attn_gate)
            if module.ffn is not None:
                nn.init.zeros_(module.ffn_gate)


class BridgeForConditionalGeneration(BridgePreTrainedModel, GenerationMixin):
    """Frozen backbone + frozen causal LM + trainable gated cross-attention bridge."""

    _auto_class = "AutoModelForImageTextToText"

    def __init__(self, config: BridgeConfig, vision_model=None, language_model=None):
        super().__init__(config)
        for given in (vision_model, language_model):
            if given is not None:  # pretrained weights: post_init() must not re-initialise them
                for module in given.modules():
                    module._is_hf_initialized = True
        self.vision_model = vision_model if vision_model is not None else AutoModel.from_config(config.vision_config)
        self.language_model = (language_model if language_model is not None
                               else AutoModelForCausalLM.from_config(config.text_config))
        self.bridge = BridgeModule(config)
        self._bridge_slot = _ContextSlot()
        layers = self._decoder_layers()
        for index, layer_idx in enumerate(config.cross_attention_layers):
            layers[layer_idx].register_forward_pre_hook(_CrossAttentionHook(self, index), with_kwargs=True)
        self.post_init()
        self.freeze_backbones()

    # ------------------------------------------------------------------ plumbing
    def _decoder_layers(self) -> nn.ModuleList:
        n = self.config.text_config.num_hidden_layers
        decoder = self.language_model.get_decoder() if hasattr(self.language_model, "get_decoder") else None
        layers = getattr(decoder, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) == n:
            return layers
        for _, module in self.language_model.named_modules():  # other layouts: the first list of n layers
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        raise ValueError(f"cannot find the {n} decoder layers of {type(self.language_model).__name__}")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading replaces the parameters built in __init__ (requires_grad back on): freeze again.
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_backbones()
        return model

    def freeze_backbones(self) -> None:
        """Freeze the vision backbone and the language model (the bridge stays trainable)."""
        self.vision_model.requires_grad_(False)
        self.language_model.requires_grad_(False)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    # ------------------------------------------------------------------ images
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features projected to the bridge width: ``image_embeds`` [B, N, h]."""
        vis_dtype = next(self.vision_model.parameters()).dtype
        layer = self.config.vision_feature_layer
        out = self.vision_model(pixel_values=pixel_values.to(vis_dtype), output_hidden_states=layer != -1)
        feats = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        # the model's compute dtype (the projector's own weight may be an int8 module's packed weight)
        proj_dtype = self.language_model.get_input_embeddings().weight.dtype
        return self.bridge.projector(feats.to(proj_dtype))

    def get_image_context(self, pixel_values=None, image_embeds=None) -> torch.Tensor | None:
        """The per-block keys/values every text position attends to (None without an image)."""
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.get_image_features(pixel_values)
        return None if image_embeds is None else self.bridge.image_context(image_embeds)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                image_embeds=None, image_context=None, **kwargs):
        """Causal LM forward with the image read through the bridge.

        The image comes as ``pixel_values``, precomputed ``image_embeds`` (projector output)
        or ``image_context`` (per-block keys/values, what generate() passes each step);
        without any of them the model is the bare language model. ``labels`` follow the
        causal-LM convention (shifted inside; -100 ignored).
        """
        if _TRANSFORMERS_4 and self.training and self.is_gradient_checkpointing:
            # 4.x checkpoints a layer's __call__, hooks included: the backward replay (on the
            # autograd thread) would run without the image. 5.x checkpoints forward only.
            raise RuntimeError("training the bridge with gradient checkpointing needs transformers >= 5")
        if image_context is None:
            image_context = self.get_image_context(pixel_values, image_embeds)
        self._bridge_slot.value = image_context
        try:
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                                       use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        finally:
            self._bridge_slot.value = None

    @torch.no_grad()
    def generate(self, inputs=None, pixel_values=None, image_embeds=None, image_context=None, **kwargs):
        """GenerationMixin.generate with the image context computed once per call.

        The context becomes a model input that every decode step receives (expanded for
        beams and ``num_return_sequences`` with the other batch tensors), instead of
        re-running the backbone per step.
        """
        if image_context is None:
            image_context = self.get_image_context(pixel_values, image_embeds)
        return super().generate(inputs, image_context=image_context, **kwargs)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_vision_text_pretrained(cls, vision_model_name_or_path: str, text_model_name_or_path: str, *,
                                    dtype=None, revision=None, **bridge_kwargs) -> BridgeForConditionalGeneration:
        """A new bridge (random, zero-gated) over pretrained backbone + LM weights.

        ``bridge_kwargs`` are BridgeConfig options (bridge_depth, cross_attention_layers, ...).
        A full CLIP/SigLIP checkpoint contributes its vision tower only.
        """
        from transformers import AutoConfig

        vis_cfg = AutoConfig.from_pretrained(vision_model_name_or_path, revision=revision)
        vis_cfg = getattr(vis_cfg, "vision_config", vis_cfg) if vis_cfg.model_type in ("clip", "siglip", "siglip2") \
            else vis_cfg
        vision = AutoModel.from_pretrained(vision_model_name_or_path, config=vis_cfg, dtype=dtype, revision=revision)
        lm = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, dtype=dtype, revision=revision)
        config = BridgeConfig(vision_config=vision.config.to_dict(), text_config=lm.config.to_dict(),
                              vision_model_name_or_path=str(vision_model_name_or_path),
                              text_model_name_or_path=str(text_model_name_or_path), **bridge_kwargs)
        model = cls(config, vision_model=vision, language_model=lm)
        if dtype is not None:
            model.bridge.to(dtype)
        return model


__all__ = ["BridgeConfig", "BridgeForConditionalGeneration", "BridgePreTrainedModel"]
