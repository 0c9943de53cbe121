"""Speed options of the captioning core keep its captions, and the generation benchmark's
pieces (FLOP count, variants, GEMM peak) work on tiny models."""

import sys
import threading
from pathlib import Path

import pytest
import torch

from captioning import generation
from captioning.generation import GenerationSettings, caption_images
from captioning.loading import load_captioner

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

FAMILIES = ["idefics3", "blip"]


@pytest.fixture(scope="module")
def captioners(tiny_models):
    return {fam: load_captioner(tiny_models[fam]) for fam in FAMILIES}


def _vision_tower(cap):
    names = cap.family.module_names(cap.model, cap.family.vision_pattern)
    return dict(cap.model.named_modules())[min(names, key=len)]


@pytest.mark.parametrize("fam", FAMILIES)
def test_vision_batch_size_changes_speed_not_captions(captioners, fam, shapes_images):
    cap = captioners[fam]
    images = shapes_images[:5]  # 5 in a batch of 5: chunks of 2 leave a remainder
    settings = GenerationSettings(max_new_tokens=8)
    tower = _vision_tower(cap)
    first_child = next(iter(tower.children()))
    calls = []
    handle = first_child.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        whole = caption_images(cap, images, None, settings, batch_size=5, vision_batch_size=None)
        n_whole = len(calls)
        by_two = caption_images(cap, images, None, settings, batch_size=5, vision_batch_size=2)
        n_two = len(calls) - n_whole
        single = [caption_images(cap, [im], None, settings, batch_size=1)[0] for im in images]
    finally:
        handle.remove()
    assert whole == by_two == single
    assert (n_whole, n_two) == (1, 3)  # the tower really ran in chunks of 2, 2, 1
    assert "forward" not in tower.__dict__  # the wrapper is gone afterwards
    assert not generation._PATCHED


def test_vision_batch_size_must_be_positive(captioners, shapes_images):
    from captioning.errors import UserError

    with pytest.raises(UserError, match="vision_batch_size"):
        caption_images(captioners["blip"], shapes_images[:1], vision_batch_size=0)


def test_concurrent_callers_share_and_remove_the_wrapper(captioners, shapes_images):
    cap = captioners["idefics3"]
    settings = GenerationSettings(max_new_tokens=6)
    expected = caption_images(cap, shapes_images[:4], None, settings, batch_size=4, vision_batch_size=None)
    out, errors = {}, []

    def work(k, chunk):
        try:
            out[k] = caption_images(cap, shapes_images[:4], None, settings, batch_size=4, vision_batch_size=chunk)
        except Exception as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k, c)) for k, c in enumerate([1, 3, None, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(v == expected for v in out.values())
    assert "forward" not in _vision_tower(cap).__dict__ and not generation._PATCHED


def test_concat_joins_model_outputs_field_by_field():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    parts = [BaseModelOutputWithPooling(last_hidden_state=torch.full((n, 3, 2), float(n)),
                                        hidden_states=(torch.zeros(n, 1), torch.ones(n, 1)))
             for n in (2, 1)]
    joined = generation._concat(parts)
    assert isinstance(joined, BaseModelOutputWithPooling)
    assert joined.last_hidden_state.shape == (3, 3, 2) and joined.pooler_output is None
    assert [h.shape[0] for h in joined.hidden_states] == [3, 3]
    assert generation._concat([[1, 2], [3]]) == [1, 2, 3]


def test_mixed_prompts_are_batched_by_length_in_order(captioners):
    cap = captioners["idefics3"]
    prompts = ["Describe this image in a long sentence please.", "Hi", None, "Hi"]
    per_image = [p or cap.prompt for p in prompts]
    batches = list(generation._batches(cap.family, cap.processor, per_image, 2))
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    assert batches[0] == [1, 3]  # the two short prompts share a batch
    same = list(generation._batches(cap.family, cap.processor, [cap.prompt] * 3, 2))
    assert same == [[0, 1], [2]]  # one prompt: input order


def test_flop_formula_matches_published_counts():
    from caption_flops import caption_flops

    from captioning.factory import build_model

    with torch.device("meta"):  # configs only: no memory, a second
        smol, _ = build_model("idefics3", "real")
        blip, _ = build_model("blip", "real")
    s = caption_flops(smol.config, "idefics3", prompt_tokens=83, new_tokens=20)
    b = caption_flops(blip.config, "blip", prompt_tokens=1, new_tokens=20)
    # FIELD_NOTES: ~238 GFLOP per SmolVLM caption (90% vision + connector), ~133 per BLIP (vision 111)
    assert s["total"] == pytest.approx(238, abs=1.5)
    assert (s["vision"] + s["connector"]) / s["total"] == pytest.approx(0.9, abs=0.01)
    assert b["total"] == pytest.approx(133, abs=1.0) and b["vision"] == pytest.approx(111, abs=0.5)


def test_gemm_peak_is_positive_and_restores_threads():
    from gemm_peak import gemm_peak

    before = torch.get_num_threads()
    res = gemm_peak((64, 96), threads=1, reps=1)
    assert res["gflops"] > 0 and set(res["per_size"]) == {64, 96}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("fam", FAMILIES)
def test_bench_variants_caption_alike(tiny_models, fam):
    """The seeds' one-at-a-time loop and the batched variant, in process on a tiny model."""
    import generation_speed as gs

    name = {"idefics3": "smolvlm", "blip": "blip"}[fam]
    spec = {"model": name, "family": fam, "model_dir": str(tiny_models[fam]), "threads": 1, "n_images": 3,
            "batch_size": 2, "new_tokens": 4, "warmup_images": 1, "vision_batch_size": None}
    one = gs.OneAtATime({**spec, "variant": "one_at_a_time"})
    bat = gs.Batched({**spec, "variant": "batched"})
    a, b = one.run(0, 3), bat.run(0, 3)
    assert a["captions"] == b["captions"] and len(a["captions"]) == 3
    assert a["tokens"] == b["tokens"] and [len(t) for t in a["tokens"]] == [4, 4, 4]
    assert b["breakdown_s"]["vision"] > 0 and b["breakdown_s"]["processor"] > 0
    assert one.prompt_tokens() > (1 if fam == "idefics3" else 0)
    assert gs.rss_mb()["peak_rss_mb"] > 0
