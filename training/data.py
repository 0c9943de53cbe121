"""Training data: the torch Dataset the Trainer reads (its targets rewritten by a caption
transform of captioning.data.examples), the collator, and the frozen-tower feature cache.

Everything model-specific (prompt + image tokens, label masking, padding) comes from the
family's ``encode_example`` / ``collate``; this module only decides WHICH caption of which
image goes into each step, and where the image features come from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

from captioning.data import CAPTION_TRANSFORMS
from captioning.errors import UserError
from captioning.families.base import IGNORE_INDEX, per_token_keys


def _pick(seed: int, epoch: int, image_id, n: int) -> int:
    # A hash of (seed, epoch, image) instead of a stateful RNG: the caption an example gets
    # depends only on where training is, so a resumed run draws the same captions.
    digest = hashlib.sha256(f"{seed}/{epoch}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


PIXEL_PREFIX = "pixel_"


class CaptionTrainDataset(torch.utils.data.Dataset):
    """(image, caption) training examples encoded by the family.

    ``references="sample"``: one item per image, a different reference each epoch (seeded);
    ``"all"``: one item per (image, reference). ``cache``: a :class:`FeatureCache`; examples
    then carry ``image_features`` instead of pixels and the image is never loaded.
    """

    def __init__(self, examples: Sequence, family, processor, prompt: str | None, *, references: str = "sample",
                 transform: Callable[[str], str] = CAPTION_TRANSFORMS["none"], seed: int = 0,
                 cache: FeatureCache | None = None):
        self.examples, self.family, self.processor, self.prompt = examples, family, processor, prompt
        self.transform, self.seed, self.cache = transform, seed, cache
        self.epoch = 0
        if references == "all":
            self.items = [(i, j) for i, ex in enumerate(examples) for j in range(len(ex.references))]
        elif references == "sample":
            self.items = [(i, None) for i in range(len(examples))]
        else:
            raise UserError(f"data.references {references!r}: choose sample or all")
        if cache is not None and len(cache.features) != len(examples):
            raise ValueError("one cached feature tensor per image is needed")

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer's data loader at each epoch (picks the sampled references)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def caption(self, index: int) -> str:
        """The target caption of item ``index`` in the current epoch (after the transform)."""
        i, j = self.items[index]
        ex = self.examples[i]
        if j is None:
            j = _pick(self.seed, self.epoch, ex.image_id, len(ex.references))
        return self.transform(ex.references[j])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, _ = self.items[index]
        if self.cache is not None:
            return self.cache.example(i, self.caption(index), self.family, self.processor, self.prompt)
        ex = self.examples[i]
        return self.family.encode_example(self.processor, ex.load_image(), self.caption(index), self.prompt)


class Collator:
    """The family's collate, plus cached image features concatenated in batch order
    (the order in which the model fills the image tokens)."""

    def __init__(self, family, processor):
        self.family, self.processor = family, processor

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        feats = [ex.pop("image_features") for ex in examples] if "image_features" in examples[0] else None
        batch = self.family.collate(self.processor, examples)
        if feats is not None:
            batch["image_features"] = torch.cat(feats)
        return batch


# ------------------------------------------------------------ feature cache
def check_feature_cache(family, model) -> None:
    """UserError unless the model can take cached features and nothing in front of them trains."""
    if not family.feature_cache:
        raise UserError(f"data.feature_cache: the {family.name} family cannot take precomputed image features; "
                        "switch it off")
    groups = family.parameter_groups(model)
    params = dict(model.named_parameters())
    trained = [n for n in groups["vision"] + groups["connector"] if params[n].requires_grad]
    if trained:
        raise UserError(f"data.feature_cache: {trained[0]} (vision/connector) is trainable, so cached features "
                        "would go stale; remove it from lora.target_modules or switch the cache off")


class FeatureCache:
    """Per image: the vision tower + connector output, and the prompt part of its encoded
    example (prompt text with the image tokens laid out for that image's crops).

    With both stored, a training example needs no image at all: the prompt part is reused
    and only the caption is tokenised, so the image processor does not run every step either.
    """

    def __init__(self, features: list[torch.Tensor], prompts: list[dict[str, torch.Tensor]]):
        self.features, self.prompts = features, prompts

    def example(self, i: int, caption: str, family, processor, prompt: str | None) -> dict[str, torch.Tensor]:
        """What ``family.encode_example`` returns for image ``i`` and ``caption``, with
        ``image_features`` in place of the pixel tensors."""
        # The caption part exactly as Family.encode_example builds it; tests/training check the two agree.
        out = family.join(self.prompts[i], family.answer_ids(processor, prompt, caption))
        out["image_features"] = self.features[i]
        return out

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.features)


def _prompt_part(enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unsupervised head of an encoded example (labels -100 up to the caption), plus any
    extra non-pixel tensors the family adds."""
    labels = enc["labels"][0]
    supervised = (labels != IGNORE_INDEX).nonzero()
    n = int(supervised[0]) if len(supervised) else labels.shape[0]
    per_token = per_token_keys(enc)
    return {k: v[:, :n] if k in per_token or k == "input_ids" else v for k, v in enc.items()
            if not k.startswith(PIXEL_PREFIX) and k not in ("attention_mask", "labels")}


@torch.no_grad()
def compute_feature_cache(model, family, processor, examples: Sequence, prompt: str | None, *,
                          batch_size: int = 8, device=None, dtype=None,
                          progress: Callable[[int], None] | None = None) -> FeatureCache:
    """Run every image once through the frozen vision tower + connector.

    Features are ``[image_tokens, hidden]`` tensors on the CPU. They come from the same
    processor path as training (``encode_example``), so they are exactly what the forward
    pass would compute from the pixels.
    """
    if not family.feature_cache:
        raise UserError(f"data.feature_cache: the {family.name} family cannot take precomputed image features")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = base.training
    base.eval()
    device = device or next(base.parameters()).device
    feats_out: list[torch.Tensor] = []
    prompts: list[dict[str, torch.Tensor]] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            encs = [family.encode_example(processor, ex.load_image(), "", prompt) for ex in chunk]
            prompts.extend(_prompt_part(e) for e in encs)
            pix = family.collate(processor, [{k: v for k, v in e.items() if k.startswith(PIXEL_PREFIX)}
                                             for e in encs])
            kwargs = {k: v.to(device) for k, v in pix.items()}
            if dtype is not None:
                kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype)
            feats_out.extend(f.detach().to("cpu") for f in family.image_features(base, kwargs))
            if progress is not None:
                progress(len(chunk))
    finally:
        base.train(was_training)
    return FeatureCache(feats_out, prompts)


def features_to_model_inputs(inputs: dict, family) -> dict:
    """A batch as the forward takes it: cached ``image_features`` (if any) turned into the
    family's argument for precomputed features (pixels dropped)."""
    if "image_features" not in inputs:
        return inputs
    return family.feature_inputs({k: v for k, v in inputs.items() if not k.startswith(PIXEL_PREFIX)})
