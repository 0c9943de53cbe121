"""Random-model factory: tiny models are tiny; real-size ones match the published counts."""

import pytest
import torch

from captioning.families import get_family
from synthetic.factory import build_model, count_parameters, main

# Published parameter counts (model cards): SmolVLM-256M-Instruct 256.48M; BLIP base
# 224M unique (247M counting the tied output matrix twice, as the Hub page counts it).
PUBLISHED = {
    "idefics3": {"total": 256.48e6, "vision": 86.4e6, "connector": 7.1e6},
    "blip": {"total": 224.0e6, "total_counting_tied": 247.4e6},
}


def test_tiny_models_are_well_under_one_megabyte(tiny_models):
    for fam, path in tiny_models.items():
        weights = path / "model.safetensors"
        assert weights.stat().st_size < 700_000, fam
        assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.parametrize("fam", ["idefics3", "blip"])
def test_real_size_parameter_counts_match_published(fam):
    with torch.device("meta"):  # no memory, no init time: shapes are all we count
        model, processor = build_model(fam, "real")
    counts = count_parameters(model, get_family(fam))
    for key, expected in PUBLISHED[fam].items():
        assert counts[key] == pytest.approx(expected, rel=0.005), (key, counts[key])
    if fam == "idefics3":
        assert model.config.text_config.vocab_size == 49280
        assert processor.image_seq_len == 64  # (512/16)^2 / 4^2 image tokens per crop
        assert processor.image_processor.do_image_splitting
    else:
        assert model.config.text_config.vocab_size == 30524
        assert processor.image_processor.size["height"] == 384


def test_factory_cli(tmp_path, capsys):
    assert main(["--family", "blip", "--size", "tiny", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert main(["--family", "idefics3", "--size", "real", "--params-only"]) == 0
    assert "total=256.4" in capsys.readouterr().out
    assert main(["--family", "blip", "--size", "tiny"]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("fam", ["idefics3", "blip", "bridge"])
def test_demo_models_see_the_full_64px_image(fam):
    """Demo size: the 64 px shapes image is upscaled, never downscaled, and for idefics3 it
    becomes one image token per cell of the shapes grid (3x3), the layout it learns from."""
    from PIL import Image

    from synthetic.shapes import GRID

    model, processor = build_model(fam, "demo")
    pixels = processor.image_processor(Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"]
    assert min(pixels.shape[-2:]) >= 64
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    if fam == "idefics3":
        assert processor.image_seq_len == GRID * GRID
        assert pixels.shape[-1] // model.config.vision_config.patch_size % GRID == 0
