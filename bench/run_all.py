"""`make bench`: run every benchmark script in bench/ and collect their JSON results.

    python bench/run_all.py [--only NAME,...] [--quick]

Each script answers one question and writes bench/results/<name>.json; this
runner only calls them in turn (they are independent) and prints where the
results went. BENCHMARKS.md holds the table of the latest recorded numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "score_speed": ["bench/score_speed.py"],
    "generation_speed": ["bench/generation_speed.py"],
    "train_cache": ["bench/train_cache.py"],
    "space_load": ["bench/space_load.py"],
    "int8_speed": ["bench/int8_speed.py"],
    "llamacpp_peer": ["bench/llamacpp_peer.py"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCRIPTS))
    parser.add_argument("--quick", action="store_true", help="pass --quick to scripts that have it (smoke run)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"error: --only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}",
              file=sys.stderr)
        return 2
    failed = []
    for name in names:
        cmd = [sys.executable, *SCRIPTS[name]] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        if subprocess.call(cmd, cwd=HERE.parent) != 0:
            failed.append(name)
    print(f"results in {HERE / 'results'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
