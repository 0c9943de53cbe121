"""The vision-language bridge model (frozen backbone + frozen causal LM + trainable gated
cross-attention). The three modules here are self-contained: ``save_pretrained`` copies
them next to the weights so the checkpoint loads with ``trust_remote_code=True``."""

from captioning.bridge.configuration_bridge import BridgeConfig
from captioning.bridge.modeling_bridge import BridgeForConditionalGeneration
from captioning.bridge.processing_bridge import BridgeProcessor

__all__ = ["BridgeConfig", "BridgeForConditionalGeneration", "BridgeProcessor"]
