"""Caption image files with any model the core loads (hub id, folder, adapter).

    python -m captioning.caption --model models/tiny-smolvlm data/shapes/images/test/000000.png
    python -m captioning.caption --model Salesforce/blip-image-captioning-base --num-beams 3 photo.jpg
"""

from __future__ import annotations

import argparse
import sys

from captioning.cli import QUANTIZE_CHOICES, ArgumentParser, guarded, pop_debug, printable
from captioning.errors import UserError
from captioning.images import MAX_PIXELS


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m captioning.caption", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="hub id or local folder")
    parser.add_argument("--adapter", help="LoRA adapter folder written by training/train.py")
    parser.add_argument("--revision")
    parser.add_argument("--prompt", help="instruction (instruct models) or text prefix (BLIP)")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--num-captions", type=int, default=1)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy/beam search")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"refuse images over this many pixels (default {MAX_PIXELS:,})")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                        help="int8: int8 weights and activations in every Linear layer (CPU; about 2x faster)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow models that ship their own code (never on by default)")
    argv, debug = pop_debug(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage mistake already printed as one line
        return int(exc.code or 0)

    def run() -> None:
        from captioning.generation import GenerationSettings, caption_images
        from captioning.images import load_image
        from captioning.loading import load_captioner

        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                      num_captions=args.num_captions, do_sample=args.sample,
                                      temperature=args.temperature, top_p=args.top_p)
        if args.max_pixels < 1:
            raise UserError("--max-pixels must be a positive number of pixels")
        images = [load_image(p, max_pixels=args.max_pixels) for p in args.images]
        cap = load_captioner(args.model, revision=args.revision, adapter=args.adapter, dtype=args.dtype,
                             device=args.device, trust_remote_code=args.trust_remote_code, quantize=args.quantize,
                             prepack=True)
        results = caption_images(cap, images, args.prompt, settings, batch_size=args.batch_size)
        for path, caps in zip(args.images, results):
            for c in caps:
                print(f"{path}\t{printable(c)}")

    return guarded(run, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
