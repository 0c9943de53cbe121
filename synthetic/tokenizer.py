"""Offline tokenizers for the random models of synthetic.factory, synthetic.factory_chat and
synthetic.factory_video: a byte-level BPE (SmolVLM-style by default; other architectures pass
their own special tokens) and a BLIP-style word-piece vocabulary, both learned from a built-in
corpus of common caption words and shapes captions, so nothing is downloaded.

The builders share only this module; it imports none of them (imports go one way:
factory -> factory_chat / factory_video -> tokenizer -> shapes).
"""

from __future__ import annotations

from pathlib import Path

# SmolVLM's special tokens (HuggingFaceTB/SmolVLM-*-Instruct): the default of build_bpe_tokenizer
SMOLVLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<pad>", "<end_of_utterance>", "<image>",
                   "<fake_token_around_image>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

# Words the offline tokenizers learn whole: the shapes grammar, common caption words
# and the default instruction. Anything else still encodes (byte-level BPE / chars).
_WORDS = """a an the one two three shapes shape circle circles square squares triangle triangles star stars
diamond diamonds hexagon hexagons red green blue yellow purple orange white black gray grey pink brown cyan
small large big tiny above below under over left right of to and with next beside on in at top bottom
middle center there is are image picture photo showing shows of a plain textured background lines dots
give concise caption describe this user assistant man woman dog cat person people sitting standing
street table car tree water grass sky building plate food group holding near front""".split()


def _corpus() -> list[str]:
    import random

    from synthetic import shapes

    lines = [" ".join(_WORDS[i:i + 8]) for i in range(0, len(_WORDS), 8)]
    rng = random.Random(0)
    # whole captions from the shapes grammar so its phrases become single BPE merges
    for _ in range(200):
        lines += shapes.describe(shapes.sample_scene(rng, 64))
    lines += [" ".join(shapes.vocabulary())] * 4 + ["Give a concise caption.", "User: Assistant:"]
    return lines


def build_bpe_tokenizer(vocab_size: int = 400, *, special: list[str] | None = None, bos: str | None = "<|im_start|>",
                        eos: str = "<end_of_utterance>", pad: str = "<pad>", unk: str | None = "<|endoftext|>",
                        **extra):
    """A byte-level BPE trained on the built-in corpus. Defaults: SmolVLM-style, with every
    special token the Idefics3 processor needs; other architectures pass their own
    ``special`` tokens (all of them kept whole) and bos/eos/pad/unk. ``extra`` goes to the
    tokenizer (e.g. ``extra_special_tokens`` naming a processor's image token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if special is None:
        special = SMOLVLM_SPECIAL
        extra.setdefault("additional_special_tokens", SMOLVLM_SPECIAL[3:])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    extra.setdefault("additional_special_tokens", [t for t in special if t not in (bos, eos, pad, unk)])
    # model_input_names: without it transformers 4.x also emits token_type_ids, which generate() rejects
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
                                   model_input_names=["input_ids", "attention_mask"], **extra)


def build_wordpiece_tokenizer(folder: Path):
    """A BERT word-piece tokenizer (BLIP-style, bos ``[DEC]``) from a vocab written here."""
    from transformers import BertTokenizer

    chars = [chr(c) for c in range(33, 127)]
    special = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    from synthetic import shapes

    words = sorted(set(w.lower() for w in _WORDS) | {w for w in shapes.vocabulary() if w.isalpha()})
    vocab = list(dict.fromkeys(special + words + chars + [f"##{c}" for c in chars if c.isalnum()]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab + ["[DEC]"]) + "\n")
    # BertTokenizer(vocab_file=...) is silently ignored in transformers 5; from_pretrained works in both majors
    return BertTokenizer.from_pretrained(str(folder), bos_token="[DEC]", model_input_names=["input_ids",
                                                                                           "attention_mask"])
