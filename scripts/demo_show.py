"""What `make demo` prints at the end: a few test images with a reference caption and each
model's caption (read from the evals' predictions.json, so nothing is captioned twice), then
each eval's scene accuracy and CIDEr.

    python scripts/demo_show.py DATASET --images 4 NAME=EVAL_DIR [NAME=EVAL_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioning.cli import ArgumentParser, guarded
from captioning.data import load_captions
from captioning.errors import UserError
from captioning.records import KIND_EVAL, read_record
from eval.scene import score_caption


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python scripts/demo_show.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="the shapes dataset folder the evals ran on")
    ap.add_argument("evals", nargs="+", metavar="NAME=EVAL_DIR")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=4)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage mistake already printed as one line
        return int(exc.code or 0)

    def run() -> None:
        from captioning.files import read_json_file

        evals = []
        for item in args.evals:
            name, sep, folder = item.partition("=")
            if not sep:
                raise UserError(f"{item!r}: write NAME=EVAL_DIR")
            preds = read_json_file(Path(folder) / "predictions.json", "predictions.json")
            evals.append((name, {p["image_id"]: p["caption"] for p in preds}, read_record(Path(folder), KIND_EVAL)))
        data = load_captions(args.dataset, split=args.split)
        scenes = data.scenes() or {}
        width = max(len(name) for name, *_ in evals) + 2
        for ex in list(data)[:args.images]:
            print(f"\n{ex.file_name}")
            print(f"  {'reference':<{width}}{ex.references[0]}")
            for name, captions, _ in evals:
                caption = captions.get(ex.image_id, "")
                mark = ""
                if ex.image_id in scenes:
                    right = score_caption(caption, scenes[ex.image_id]).exact
                    mark = "  [right objects]" if right else "  [WRONG objects]"
                print(f"  {name:<{width}}{caption}{mark}")
        print()
        for name, _, record in evals:
            scene = record.get("scene_accuracy")
            cider = record.get("metrics", {}).get("CIDEr")
            style = record.get("dataset", {}).get("caption_transform", "none")
            refs = "" if style == "none" else f" (against references in its style, {style})"
            line = f"{name}: CIDEr {cider:.3f}{refs}" if cider is not None else f"{name}:"
            if scene:
                line += (f", scene accuracy: exact object set {scene['exact']:.1%}, object precision "
                         f"{scene['object_precision']:.1%}, recall {scene['object_recall']:.1%} "
                         f"on {scene['n_images']} {args.split} images")
            print(line)

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
