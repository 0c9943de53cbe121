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
        # one batch at a time: two parallel lanes would cut the batch of 5 into 3 + 2
        whole = caption_images(cap, images, None, settings, batch_size=5, vision_batch_size=None,
                               parallel_batches=1)
        n_whole = len(calls)
        by_two = caption_images(cap, images, None, settings, batch_size=5, vision_batch_size=2,
                                parallel_batches=1)
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
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k, c)) for k, c in enumerate([1, 3, None, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(v == expected for v in out.values())
    assert "forward" not in _vision_tower(cap).__dict__ and not generation._PATCHED


@pytest.mark.parametrize("fam", FAMILIES)
def test_parallel_batches_change_speed_not_captions(captioners, fam, shapes_images):
    cap = captioners[fam]
    images = shapes_images[:5]  # batches of 2, 2, 1
    prompts = [None, "What is this?", None, "What is this?", None]
    settings = GenerationSettings(max_new_tokens=8)
    one = caption_images(cap, images, prompts, settings, batch_size=2, parallel_batches=1)
    single = [caption_images(cap, [im], [p], settings, batch_size=1)[0] for im, p in zip(images, prompts)]

    # The first two batches must be in generate at the same time (else the barrier breaks),
    # each on its share of the threads, off the caller's thread.
    barrier, seen = threading.Barrier(2, timeout=60), []
    generate = cap.family.generate

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        if len(seen) <= 2:
            barrier.wait()
        return generate(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    cap.family.generate = spy  # instance attribute: this captioner's family only
    try:
        two = caption_images(cap, images, prompts, settings, batch_size=2, parallel_batches=2)
    finally:
        del cap.family.generate
        torch.set_num_threads(before)
    assert one == two == single
    per_image = [p or cap.prompt for p in prompts]
    planned = generation.plan_batches(list(generation._batches(cap.family, cap.processor, per_image, 2)), 2)
    assert len(seen) == len(planned) >= 3
    assert all(name.startswith("caption-batch") and n == 1 for name, n in seen)
    assert len({name for name, _ in seen}) == 2


def test_parallel_batches_rules(captioners):
    from types import SimpleNamespace

    from captioning.errors import UserError

    cpu, gpu = captioners["blip"], SimpleNamespace(device=torch.device("cuda", 0))
    greedy, sampled = GenerationSettings(), GenerationSettings(do_sample=True, seed=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert generation.parallel_batches_for(cpu, greedy) == generation.PARALLEL_BATCHES["cpu"] == 2
        assert generation.parallel_batches_for(gpu, greedy) == 1
        assert generation.parallel_batches_for(cpu, greedy, 3) == 3
        torch.set_num_threads(1)
        assert generation.parallel_batches_for(cpu, greedy) == 1  # never more batches than threads
    finally:
        torch.set_num_threads(before)
    # sampling seeds torch's one global generator per batch: parallel batches would share it
    assert generation.parallel_batches_for(cpu, sampled, 4) == 1
    # a batch already running in parallel does not start more
    inside = list(generation.run_parallel([lambda: generation.parallel_batches_for(cpu, greedy, 2)] * 2, 2))
    assert inside == [1, 1]
    for bad in (0, -1, "two", True, 1.5):
        with pytest.raises(UserError, match="--parallel-batches"):
            generation.parallel_batches_for(cpu, greedy, bad)


def test_run_parallel_keeps_order_and_stops_on_error():
    import time

    started = []

    def job(i):
        def run():
            started.append(i)
            time.sleep(0.02 * (i % 3 == 0))  # some finish out of order
            return i * i
        return run

    results = generation.run_parallel([job(i) for i in range(10)], 2)
    assert next(results) == 0
    assert len(started) <= 4  # at most 2n queued: a job that loads its inputs holds them briefly
    assert list(results) == [i * i for i in range(1, 10)]
    assert list(generation.run_parallel([job(i) for i in range(3)], 1)) == [0, 1, 4]  # one lane: inline

    def boom():
        raise ValueError("batch failed")

    started.clear()
    with pytest.raises(ValueError, match="batch failed"):
        list(generation.run_parallel([job(1), boom] + [job(i) for i in range(2, 40)], 2))
    assert len(started) < 10  # queued batches were cancelled, not run


def test_plan_batches_cuts_the_tail_so_every_lane_works():
    def sizes(batches, lanes):
        planned = generation.plan_batches([list(range(n)) for n in batches], lanes)
        return [len(b) for b in planned]

    assert sizes([16, 16, 16], 2) == [16, 16, 8, 8]
    assert sizes([16], 2) == [8, 8] and sizes([5], 2) == [3, 2] and sizes([1], 2) == [1]
    assert sizes([16, 16], 2) == [16, 16] and sizes([16, 16, 16], 1) == [16, 16, 16]
    assert sizes([4, 4, 4, 4, 2], 3) == [4, 4, 4, 2, 2, 1, 1]
    planned = generation.plan_batches([["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]], 2)
    assert [x for b in planned for x in b] == list("abcdefghi")  # order kept


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
