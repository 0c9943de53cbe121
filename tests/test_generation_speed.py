"""Batching in the captioning core keeps its captions, and the generation benchmark's
pieces (FLOP count, variants, GEMM peak) work on tiny models."""

import sys
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


@pytest.mark.parametrize("fam", FAMILIES)
def test_batches_caption_as_single_images_and_keep_order(captioners, fam, shapes_images):
    """Batch size changes speed, never captions: mixed prompts, a short last batch."""
    cap = captioners[fam]
    images = shapes_images[:5]  # batches of 2, 2, 1
    prompts = [None, "What is this?", None, "What is this?", None]
    settings = GenerationSettings(max_new_tokens=8)
    done = []
    batched = caption_images(cap, images, prompts, settings, batch_size=2, progress=done.append)
    single = [caption_images(cap, [im], [p], settings, batch_size=1)[0] for im, p in zip(images, prompts)]
    assert batched == single
    assert sum(done) == 5 and max(done) <= 2


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

    from synthetic.factory import build_model

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
            "batch_size": 2, "new_tokens": 4, "warmup_images": 1}
    one = gs.OneAtATime({**spec, "variant": "one_at_a_time"})
    bat = gs.Batched({**spec, "variant": "batched"})
    a, b = one.run(0, 3), bat.run(0, 3)
    assert a["captions"] == b["captions"] and len(a["captions"]) == 3
    assert a["tokens"] == b["tokens"] and [len(t) for t in a["tokens"]] == [4, 4, 4]
    assert b["breakdown_s"]["vision"] > 0 and b["breakdown_s"]["processor"] > 0
    assert one.prompt_tokens() > (1 if fam == "idefics3" else 0)
    assert gs.rss_mb()["peak_rss_mb"] > 0
