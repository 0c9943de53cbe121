"""Caption image files with any model the core loads (hub id, folder, adapter).

    python -m captioning.caption --model models/tiny-smolvlm data/shapes/images/test/000000.png
    python -m captioning.caption --model Salesforce/blip-image-captioning-base --num-beams 3 photo.jpg
"""

from __future__ import annotations

import argparse
import sys

from captioning.cli import ArgumentParser, printable, run_command
from captioning.errors import UserError
from captioning.generation import GenerationSettings
from captioning.images import MAX_PIXELS
from captioning.options import add_options, option_values, positive_int
from captioning.vocabulary import QUANTIZE_CHOICES


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m captioning.caption", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="hub id or local folder")
    parser.add_argument("--adapter", help="LoRA adapter folder written by training/train.py")
    parser.add_argument("--revision")
    parser.add_argument("--prompt", help="instruction (instruct models) or text prefix (BLIP)")
    add_options(parser, GenerationSettings)  # every decoding flag, declared once on the settings class
    parser.add_argument("--num-captions", type=positive_int, default=1,
                        help="captions per image: samples with --sample, else the best beams (default 1)")
    parser.add_argument("--seed", type=int, help="seeds --sample, so sampled captions are reproducible")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"refuse images over this many pixels (default {MAX_PIXELS:,})")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                        help="int8: int8 weights and activations in every Linear layer (CPU; faster: "
                             "BENCHMARKS.md, \"int8 serving on CPU\")")
    parser.add_argument("--no-prepack", dest="prepack", action="store_false",
                        help="plain fp32 Linear layers instead of ones prepacked for oneDNN (CPU; prepacked is faster, "
                             "same captions: BENCHMARKS.md)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow models that ship their own code (never on by default)")

    def run(args: argparse.Namespace) -> None:
        from captioning.generation import caption_images
        from captioning.images import load_image
        from captioning.loading import load_captioner

        settings = GenerationSettings(**option_values(GenerationSettings, args), num_captions=args.num_captions,
                                      seed=args.seed)
        if args.max_pixels < 1:
            raise UserError("--max-pixels must be a positive number of pixels")
        images = [load_image(p, max_pixels=args.max_pixels) for p in args.images]
        cap = load_captioner(args.model, revision=args.revision, adapter=args.adapter, dtype=args.dtype,
                             device=args.device, trust_remote_code=args.trust_remote_code, quantize=args.quantize,
                             prepack=args.prepack)
        results = caption_images(cap, images, args.prompt, settings, batch_size=args.batch_size)
        for path, caps in zip(args.images, results):
            for c in caps:
                print(f"{path}\t{printable(c)}")

    return run_command(parser, argv, run)


if __name__ == "__main__":
    sys.exit(main())
