"""Per-token side tensors of any rank (issue 30): a tensor whose dimensions 0 and 1 are those of
``input_ids`` (``token_type_ids`` [batch, seq], a rank-3 one, Mllama's ``cross_attention_mask``
[batch, seq, images, tiles]) is extended over the caption along the sequence, continuing the
prompt's last position, and right padded with zeros when batched; and a tiny random Mllama
fine-tunes through the toolkit's training path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from captioning.families.base import IGNORE_INDEX, Family, per_token_keys

PAD = 7


def _prompt(length: int, *, tiles: int = 2) -> dict[str, torch.Tensor]:
    """One example's processor output: ids, a rank-2/3/4 side tensor each, and image tensors."""
    ids = torch.arange(10, 10 + length).unsqueeze(0)
    cross = torch.zeros(1, length, 1, tiles, dtype=torch.long)
    cross[0, 2:, 0, :] = 1  # the image token at position 2 and everything after it see the image's tiles
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.tensor([[0] * (length - 1) + [3]]),  # last position differs: continued, not 0
        "position_feats": torch.arange(length * 3, dtype=torch.float).view(1, length, 3),
        "cross_attention_mask": cross,
        "pixel_values": torch.rand(1, 1, tiles, 3, 4, 4),
        "aspect_ratio_ids": torch.tensor([[1]]),
    }


def test_side_tensors_of_any_rank_are_per_token():
    ex = _prompt(5)
    assert per_token_keys(ex) == ["token_type_ids", "position_feats", "cross_attention_mask"]


def test_join_extends_every_rank_over_the_caption():
    prompt, answer = _prompt(5), torch.tensor([[40, 41, 42]])
    out = Family().join(prompt, answer)
    assert out["input_ids"].shape == (1, 8)
    assert out["labels"][0].tolist() == [IGNORE_INDEX] * 5 + [40, 41, 42]
    for key in ("token_type_ids", "position_feats", "cross_attention_mask"):
        side = out[key]
        assert side.shape[:2] == (1, 8) and side.shape[2:] == prompt[key].shape[2:], key
        assert side.dtype == prompt[key].dtype, key
        assert torch.equal(side[:, :5], prompt[key]), key
        for t in range(5, 8):  # each caption position repeats the prompt's last one
            assert torch.equal(side[:, t], prompt[key][:, -1]), (key, t)
    # Mllama: the caption attends to the image the last prompt token attends to
    assert out["cross_attention_mask"][0, 5:].eq(1).all()
    for key in ("pixel_values", "aspect_ratio_ids"):
        assert torch.equal(out[key], prompt[key]), key


def test_a_family_fill_pins_the_value_over_the_caption_and_padding():
    class Pinned(Family):
        def token_fill(self, key):
            return 1 if key == "token_type_ids" else super().token_fill(key)

    fam = Pinned()
    a = fam.join(_prompt(5), torch.tensor([[40, 41]]))
    b = fam.join(_prompt(3), torch.tensor([[40]]))
    assert a["token_type_ids"][0].tolist() == [0, 0, 0, 0, 3, 1, 1]
    assert torch.equal(a["cross_attention_mask"][:, 5:], a["cross_attention_mask"][:, 4:5].expand(1, 2, 1, 2))
    batch = fam.collate(SimpleNamespace(pad_token_id=PAD, eos_token_id=None), [a, b])
    assert batch["token_type_ids"][1].tolist() == [0, 0, 3, 1, 1, 1, 1]
    assert batch["cross_attention_mask"][1, 4:].eq(0).all()


def test_collate_pads_every_rank_along_the_sequence():
    fam = Family()
    a = fam.join(_prompt(5), torch.tensor([[40, 41, 42]]))  # 8 tokens
    b = fam.join(_prompt(4, tiles=1), torch.tensor([[50]]))  # 5 tokens, one tile fewer
    batch = fam.collate(SimpleNamespace(pad_token_id=PAD, eos_token_id=None), [a, b])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1, 5:].eq(PAD).all()
    assert batch["labels"][1, 5:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * 3
    assert batch["token_type_ids"].shape == (2, 8)
    assert batch["position_feats"].shape == (2, 8, 3)
    assert batch["cross_attention_mask"].shape == (2, 8, 1, 2)
    for key in ("token_type_ids", "position_feats", "cross_attention_mask"):
        assert torch.equal(batch[key][:1], a[key]), key
        assert torch.equal(batch[key][1:][tuple(slice(0, n) for n in b[key].shape)], b[key]), key
        assert batch[key][1, 5:].eq(0).all(), key  # padding: zeros
    assert batch["cross_attention_mask"][1, :, :, 1:].eq(0).all()  # the missing tile: zeros
    assert batch["pixel_values"].shape == (2, 1, 2, 3, 4, 4)


def test_feature_cache_prompt_part_slices_every_rank_back():
    """training.data keeps the prompt part of an encoded example; join rebuilds the example."""
    from training.data import _prompt_part

    fam = Family()
    prompt, answer = _prompt(5), torch.tensor([[40, 41, 42]])
    enc = fam.join(prompt, answer)
    part = _prompt_part(enc)
    for key in ("input_ids", "token_type_ids", "position_feats", "cross_attention_mask"):
        assert torch.equal(part[key], prompt[key]), key
    again = fam.join(part, answer)
    for key in enc:
        if not key.startswith("pixel_"):
            assert torch.equal(again[key], enc[key]), key


# ----------------------------------------------------------------- a tiny random Mllama
# Llama-3.2-Vision's layout: <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>text<|eot_id|>
# <|start_header_id|>assistant<|end_header_id|>\n\n (the published template, less its tool and date handling)
MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<|image|>' }}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def mllama_dir(tmp_path_factory):
    """A tiny random Mllama (16 px tiles, up to 2 per image, one cross-attention layer) saved
    with its processor; the toolkit serves it through the generic family."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    from synthetic.tokenizer import build_bpe_tokenizer

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>", "<|image|>"]
    tok = build_bpe_tokenizer(len(special) + 200, special=special, bos=special[0], eos=special[1], pad=special[2],
                              unk=None, add_bos_token=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    vision = dict(hidden_size=16, num_hidden_layers=2, num_global_layers=1, attention_heads=2, intermediate_size=32,
                  vision_output_dim=32, image_size=16, patch_size=8, max_num_tiles=2, intermediate_layers_indices=[0],
                  supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=64, cross_attention_layers=[1], max_position_embeddings=512,
                bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
                pad_token_id=ids["<|finetune_right_pad_id|>"])
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text,
                                                        image_token_index=ids["<|image|>"]))
    model.generation_config.eos_token_id = ids["<|eot_id|>"]
    model.generation_config.pad_token_id = ids["<|finetune_right_pad_id|>"]
    processor = MllamaProcessor(image_processor=MllamaImageProcessorPil(size={"height": 16, "width": 16},
                                                                        max_image_tiles=2),
                                tokenizer=tok, chat_template=MLLAMA_CHAT_TEMPLATE)
    folder = tmp_path_factory.mktemp("mllama")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_mllama_cross_attention_mask_covers_the_caption(mllama_dir, shapes_images):
    from captioning.loading import load_captioner
    from training.engine import caption_loss

    cap = load_captioner(str(mllama_dir), dtype="fp32", device="cpu")
    fam, proc = cap.family, cap.processor
    wide = shapes_images[1].resize((64, 32))  # two tiles; the other image one
    exs = [fam.encode_example(proc, im, c, cap.prompt)
           for im, c in zip([shapes_images[0], wide], ["a star", "two red circles above a blue square"])]
    for ex in exs:
        mask, labels = ex["cross_attention_mask"], ex["labels"][0]
        assert mask.shape[:2] == ex["input_ids"].shape
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(mask[0, first:], mask[0, first - 1:first].expand_as(mask[0, first:]))
        assert mask[0, first:].any(), "the caption attends to the image"
    batch = fam.collate(proc, exs)
    short = exs[0]["input_ids"].shape[1]
    assert batch["cross_attention_mask"].shape[:2] == batch["input_ids"].shape
    assert batch["cross_attention_mask"][0, short:].eq(0).all()
    with torch.no_grad():
        out = cap.model(**{k: v for k, v in batch.items() if k != "labels"})
    assert torch.isfinite(caption_loss(shift=fam.shifts_labels)(out, batch["labels"]))


def test_mllama_fine_tunes_through_the_training_path(mllama_dir, shapes_dir, tmp_path):
    from tests.training.helpers import Snapshot, config, tiny_recipe
    from training.train import train

    snap = Snapshot()
    recipe = tiny_recipe(mllama_dir, shapes_dir, tmp_path / "run", lora={"enabled": False},
                         output={"tensorboard": False})
    out = train(config(recipe), callbacks=[snap], log=lambda *_: None)
    assert (out / "model.safetensors").is_file()
    changed = snap.changed()
    assert any("cross_attn" in n for n in changed), "the cross-attention layers trained"
