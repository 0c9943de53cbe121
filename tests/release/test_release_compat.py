"""Released checkpoints load under transformers 4.57 (AutoModelForVision2Seq) and 5
(AutoModelForImageTextToText) and give the captions the model gave before the release.

The code that runs under each major is the usage snippet the model card prints."""

from __future__ import annotations

import json
import re
import shutil

from release.card import usage_snippet
from release.compat import make_portable, portability_problems

from .conftest import NEW_TOKENS, run_side_tf4


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _snippet(family, major, model_dir, image, prompt):
    return usage_snippet(family, major, str(model_dir), prompt, image=str(image), max_new_tokens=NEW_TOKENS)


def _run_tf5(code: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "snippet", "exec"), {"__name__": "__snippet__"})
    return buf.getvalue()


def test_released_checkpoints_load_in_transformers_4_and_5(side_tf4, merged, release_bases, prerelease_captions,
                                                          probe_pngs, tmp_path):
    from captioning.families import get_family

    assert not portability_problems(merged["idefics3"]) and not portability_problems(merged["blip"])
    # what transformers 5 writes as it is: the idefics3 base (a 5.x save) is not portable
    raw = tmp_path / "raw-5x-save"
    shutil.copytree(release_bases["idefics3"], raw)
    problems = portability_problems(raw)
    assert any("TokenizersBackend" in p for p in problems) and any("rope_theta" in p for p in problems)

    jobs, expected = [], {}
    for fam, folder in merged.items():
        prompt = get_family(fam).default_prompt
        for i, png in enumerate(probe_pngs):
            want = _norm(prerelease_captions[fam][i])
            expected[f"{fam}-{i}"] = want
            # transformers 5, in this process, with the card's tf5 snippet
            assert _norm(_run_tf5(_snippet(fam, 5, folder, png, prompt))) == want, (fam, i)
            jobs.append({"name": f"{fam}-{i}", "code": _snippet(fam, 4, folder, png, prompt),
                         "patch_idefics3_positions": fam == "idefics3"})
        if fam == "idefics3":  # the same snippet without the upstream position-id fix still runs
            jobs.append({"name": "idefics3-unpatched", "code": _snippet(fam, 4, folder, probe_pngs[0], prompt)})
    jobs.append({"name": "rope", "code": "from transformers import AutoConfig\n"
                 f"print(AutoConfig.from_pretrained({str(merged['idefics3'])!r}).text_config.rope_theta)"})
    jobs.append({"name": "raw-5x-save", "code": f"from transformers import AutoProcessor\n"
                                                f"AutoProcessor.from_pretrained({str(raw)!r})"})
    out = run_side_tf4(side_tf4, jobs)
    assert out["_transformers"] == "4.57.6"
    for name, want in expected.items():
        assert out[name]["ok"], (name, out[name].get("traceback"))
        assert _norm(out[name]["output"]) == want, (name, out[name]["output"], want)
    assert out["idefics3-unpatched"]["ok"] and out["idefics3-unpatched"]["output"].strip()
    assert float(out["rope"]["output"]) == 100000.0
    # without release.compat, transformers 4.57 cannot even read the tokenizer config
    assert not out["raw-5x-save"]["ok"] and "TokenizersBackend" in out["raw-5x-save"]["error"]


def test_make_portable_is_idempotent_and_keeps_transformers_5_reading(release_bases, tmp_path):
    from transformers import AutoConfig, AutoProcessor

    folder = tmp_path / "copy"
    shutil.copytree(release_bases["idefics3"], folder)
    changes = make_portable(folder)
    assert any("TokenizersBackend" in c for c in changes) and any("rope_theta" in c for c in changes)
    assert any("preprocessor_config.json" in c for c in changes)
    assert make_portable(folder) == []
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in tok
    assert AutoConfig.from_pretrained(folder).text_config.rope_parameters["rope_theta"] == 100000.0
    proc = AutoProcessor.from_pretrained(folder)
    assert "<end_of_utterance>" in proc.tokenizer.all_special_tokens
    assert proc.image_processor.size == {"longest_edge": 48}


def test_released_bridge_loads_in_transformers_4_and_5_with_remote_code(side_tf4, probe_pngs, tmp_path):
    """The bridge ships its own code (auto_map): a release of it reads under both majors
    with trust_remote_code=True and gives the captions the captioning core gives."""
    from captioning.generation import GenerationSettings, caption
    from captioning.images import load_image
    from captioning.loading import load_captioner
    from release.push import PushOptions, push
    from synthetic.factory import build_random_model

    model = build_random_model("bridge", tmp_path / "bridge-model", seed=3)
    folder = tmp_path / "bridge-release"
    push(PushOptions(repo_id="tests/tiny-bridge", model=model, to_dir=folder, license="apache-2.0"),
         log=lambda _msg: None)
    assert json.loads((folder / "config.json").read_text())["auto_map"]
    assert not portability_problems(folder)
    cap = load_captioner(folder, trust_remote_code=True)
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    jobs, expected = [], {}
    for i, png in enumerate(probe_pngs[:2]):
        want = _norm(caption(cap, load_image(png), None, settings))
        expected[f"bridge-{i}"] = want
        code5 = usage_snippet("bridge", 5, str(folder), cap.prompt, image=str(png), max_new_tokens=NEW_TOKENS,
                              remote_code=True)
        assert "trust_remote_code=True" in code5
        assert _norm(_run_tf5(code5)) == want, i
        jobs.append({"name": f"bridge-{i}", "code": usage_snippet(
            "bridge", 4, str(folder), cap.prompt, image=str(png), max_new_tokens=NEW_TOKENS, remote_code=True)})
    out = run_side_tf4(side_tf4, jobs)
    assert out["_transformers"] == "4.57.6"
    for name, want in expected.items():
        assert out[name]["ok"], (name, out[name].get("traceback"))
        assert _norm(out[name]["output"]) == want, (name, out[name]["output"], want)
