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
