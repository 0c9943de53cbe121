"""release merge: merged == base + adapter, and the mistakes it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from captioning.errors import UserError
from release.merge import MergeOptions, merge_adapter

from .conftest import NEW_TOKENS, PROBES, captions_of, make_adapter


@pytest.mark.parametrize("family", ["idefics3", "blip"])
def test_merged_model_equals_base_plus_adapter(family, merged, adapters, release_bases, prerelease_captions,
                                               probe_images):
    out = merged[family]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "preprocessor_config.json", "train_config.yaml", "merge_check.json"} <= names
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    if family == "idefics3":
        assert "chat_template.jinja" in names
    check = json.loads((out / "merge_check.json").read_text())
    assert check["passed"] and check["n_probes"] == PROBES and check["identical_captions"] == PROBES
    assert check["max_abs_logit_diff"] < 1e-4
    assert check["base"] == str(release_bases[family]) and check["dtype"] == "fp32"
    # the merged folder alone (no peft) captions exactly like base + adapter ...
    assert captions_of(out, probe_images) == prerelease_captions[family]
    # ... and the adapter matters: the base alone captions differently, so the check is not vacuous
    assert captions_of(release_bases[family], probe_images) != prerelease_captions[family]


def test_refuses_non_empty_out_and_already_merged(adapters, merged, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty: pass --force"):
        merge_adapter(MergeOptions(adapter=adapters["blip"], out=out))
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(UserError, match="already merged"):
        merge_adapter(MergeOptions(adapter=merged["blip"], out=tmp_path / "x"))
    with pytest.raises(UserError, match="no adapter_config.json"):
        merge_adapter(MergeOptions(adapter=out, out=tmp_path / "x"))
    with pytest.raises(UserError, match="--dtype"):
        MergeOptions(adapter=adapters["blip"], out=tmp_path / "x", dtype="int8")


@pytest.mark.parametrize("bits", [4, 8])
def test_base_from_train_config_quantized_note_and_force(release_bases, tmp_path, bits):
    """adapter_config.json without a base: train_config.yaml names it. Training used 4-bit
    (or 8-bit): the merge still loads the base at full precision, and says so. --force
    replaces the old folder."""
    ad = make_adapter("blip", release_bases["blip"], tmp_path / "qlora", seed=3, logs="none",
                      train_extra={"quantization": {f"load_in_{bits}bit": True}})
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    lines = []
    res = merge_adapter(MergeOptions(adapter=ad, out=out, force=True, probes=PROBES, max_new_tokens=NEW_TOKENS),
                        log=lines.append)
    text = "\n".join(lines)
    assert "from train_config.yaml" in text and f"never into {bits}-bit" in text and "PASS" in text
    assert res.check["passed"] and not (out / "stale.bin").exists()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # full precision, not 4-bit packed
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())

    # a base that is not on this machine: one clear message naming --base
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="pass --base"):
        merge_adapter(MergeOptions(adapter=ad, out=tmp_path / "y"))


def test_failing_check_stops_and_writes_nothing(adapters, tmp_path, monkeypatch):
    """If the saved weights do not reproduce base + adapter, the merge fails and --out stays absent."""
    import release.merge as rm

    real_save = rm.save_model_folder

    def corrupt_save(model, processor, out, dtype):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        return real_save(model, processor, out, dtype)

    monkeypatch.setattr(rm, "save_model_folder", corrupt_save)
    out = tmp_path / "merged"
    lines = []
    with pytest.raises(UserError, match="merge check failed"):
        merge_adapter(MergeOptions(adapter=adapters["blip"], out=out, probes=PROBES, max_new_tokens=NEW_TOKENS),
                      log=lines.append)
    assert "FAIL" in "\n".join(lines)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no partial folder left


def test_merging_into_another_base_is_refused_unless_acknowledged(adapters, release_bases, tmp_path):
    """Another model of the same architecture loads and merges without a complaint from
    peft, and base+adapter vs merged agree: only the recorded base fingerprint catches it."""
    from captioning.fingerprints import weights_fingerprint
    from release.card import collect_inputs, render_card
    from synthetic.factory import build_random_model

    other = build_random_model("blip", tmp_path / "other-base", seed=7)
    with pytest.raises(UserError, match=r"--base .*other-base \(weights [0-9a-f]{12}\) is not the base .* was "
                                        r"trained on: .*blip \(weights [0-9a-f]{12}\).*--allow-other-base"):
        merge_adapter(MergeOptions(adapter=adapters["blip"], out=tmp_path / "refused", base=str(other),
                                   probes=PROBES, max_new_tokens=NEW_TOKENS))
    assert not (tmp_path / "refused").exists()
    # a copy of the right base elsewhere is the same base: its weights match
    import shutil

    copy = tmp_path / "copy-of-base"
    shutil.copytree(release_bases["blip"], copy)
    res = merge_adapter(MergeOptions(adapter=adapters["blip"], out=tmp_path / "ok", base=str(copy), probes=PROBES,
                                     max_new_tokens=NEW_TOKENS), log=lambda m: None)
    assert res.check["same_base"] and res.check["checked_by"] == "weights fingerprint"
    # on purpose: allowed, recorded, and said on the card
    res = merge_adapter(MergeOptions(adapter=adapters["blip"], out=tmp_path / "other", base=str(other), probes=PROBES,
                                     max_new_tokens=NEW_TOKENS, allow_other_base=True), log=lambda m: None)
    check = json.loads((res.out / "merge_check.json").read_text())
    assert check["kind"] == "merge_check" and check["same_base"] is False
    assert check["trained_on_fingerprint"] == weights_fingerprint(release_bases["blip"])
    assert check["base_fingerprint"] == weights_fingerprint(other)
    assert check["merged_fingerprint"] == weights_fingerprint(res.out)
    text, _ = render_card(collect_inputs(res.out, repo_id="me/x"))
    assert "Merged into another base than the adapter was trained on" in text


def test_an_adapter_of_another_family_is_one_line_not_a_peft_traceback(adapters, release_bases, tmp_path):
    with pytest.raises(UserError, match=r"the adapter .* does not fit the base .*; pass the base it was trained on"):
        merge_adapter(MergeOptions(adapter=adapters["blip"], out=tmp_path / "x", base=str(release_bases["idefics3"]),
                                   allow_other_base=True, probes=PROBES, max_new_tokens=NEW_TOKENS),
                      log=lambda m: None)
    assert not (tmp_path / "x").exists()
