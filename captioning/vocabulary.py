"""The vocabularies and defaults every stage shares, each declared once here and imported
everywhere else.

Plain tuples with no imports, so a config class can validate against them without loading
torch or the scorers.
"""

from __future__ import annotations

BLEU_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
#: pycocoevalcap's metric names, in the order tables and cards print them
COCO_METRICS = BLEU_NAMES + ("METEOR", "ROUGE_L", "CIDEr", "SPICE")
#: what validation during training computes: SPICE needs Stanford CoreNLP, a 1 GB download
VALIDATION_METRICS = tuple(m for m in COCO_METRICS if m != "SPICE")
#: reference rewrites a dataset can apply (their functions: captioning.data.examples)
CAPTION_TRANSFORM_NAMES = ("none", "linguistic_errors")
#: --quantize values of every loading command ("none" is None past the command line)
QUANTIZE_CHOICES = ("none", "int8")
#: --dtype / optim.precision values: "auto" is the checkpoint's or the device's own
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
#: caption length limit, in new tokens, wherever a stage captions without being told
#: (captioning.generation.GenerationSettings, validation during training, the card's snippet)
DEFAULT_MAX_NEW_TOKENS = 30


def style_of(caption_transform: str | None) -> str | None:
    """The caption transform a record or config names, None for plain captions: records and
    flags spell "no transform" as "none" (or leave it out); past them it is None."""
    return None if caption_transform in (None, "", CAPTION_TRANSFORM_NAMES[0]) else caption_transform
