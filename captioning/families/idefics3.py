"""SmolVLM (Idefics3 architecture): HuggingFaceTB/SmolVLM-Instruct,
SmolVLM-256M-Instruct and SmolVLM-500M-Instruct."""

from __future__ import annotations

from captioning.families import register
from captioning.families.base import Family


@register
class Idefics3Family(Family):
    name = "idefics3"
    model_types = ("idefics3",)
    vision_pattern = r"(^|\.)vision_model(\.|$)"
    connector_pattern = r"(^|\.)connector(\.|$)"
    # Module paths, not bare names: SigLIP's q/k/v are also called q_proj/k_proj/v_proj.
    lora_target_regex = (
        r".*text_model\.layers\.\d+\."
        r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    )

    def configure_processor(self, processor, *, image_longest_edge=None, image_splitting=None):
        """``image_splitting`` off: one crop at the vision encoder's size (64 image
        tokens on SmolVLM-256M). On (the processor default): the image is resized so
        its longest edge is ``image_longest_edge`` (SmolVLM default 4x the encoder
        size) and cut into crops plus a global view: ~17x the vision compute."""
        ip = processor.image_processor
        if image_splitting is not None:
            ip.do_image_splitting = bool(image_splitting)
        if image_longest_edge is not None:
            ip.size = {"longest_edge": int(image_longest_edge)}

    def prepare_model(self, model, processor):
        super().prepare_model(model, processor)
        # Instruct SmolVLM ends a turn with <end_of_utterance>; make sure generation
        # stops there even when the checkpoint's generation_config only names <|endoftext|>.
        tok = self.tokenizer(processor)
        eou = tok.convert_tokens_to_ids("<end_of_utterance>")
        gc = model.generation_config
        eos = gc.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if eou is not None and eou != tok.unk_token_id and eou not in eos:
            gc.eos_token_id = eos + [eou]
