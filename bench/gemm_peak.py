"""The fp32 GEMM peak of this machine: plain ``torch.matmul`` on large square matrices.

    python bench/gemm_peak.py [--threads 2] [--sizes 2048,3072] [--reps 3]

This is the yardstick the generation benchmark divides by ("fraction of the GEMM
peak"): the best rate the BLAS reaches on shapes with no memory-bound work at all.
Nothing in a model can be expected to beat it, so 100% is the physical limit.
Each size is timed ``reps`` times after one warm-up product; the best repetition
counts (the peak is a best case by definition; other tenants only ever slow a
repetition down). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def matmul_gflops(n: int, *, reps: int = 3, dtype=None) -> tuple[float, float]:
    """Best GFLOP/s of ``reps`` n x n @ n x n products (2 n^3 FLOPs each), per second of
    wall time and per second of this process's CPU time divided by the thread count
    (the CPU-time figure does not count time the scheduler gave to other processes)."""
    import torch

    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=gen, dtype=dtype)
    b = torch.randn(n, n, generator=gen, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: page in buffers, let the BLAS pick its kernel
    best_wall = best_cpu = float("inf")
    threads = torch.get_num_threads()
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        torch.matmul(a, b, out=out)
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, (time.process_time() - c) / threads)
    flops = 2.0 * n ** 3 / 1e9
    return flops / best_wall, flops / max(best_cpu, 1e-9)


def gemm_peak(sizes=(2048, 3072), *, threads: int | None = 2, reps: int = 3) -> dict:
    """fp32 matmul peak over ``sizes``: {"gflops": best wall-clock rate, "gflops_cpu_time":
    best rate per CPU-second per thread, "per_size": {n: gflops}, "threads": t}.

    ``threads`` sets torch's intra-op thread count for the measurement and restores it after.
    """
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rates = {int(n): matmul_gflops(int(n), reps=reps) for n in sizes}
    finally:
        torch.set_num_threads(old)
    return {"gflops": round(max(w for w, _ in rates.values()), 2),
            "gflops_cpu_time": round(max(c for _, c in rates.values()), 2),
            "per_size": {n: round(w, 2) for n, (w, _) in rates.items()}, "threads": threads or old}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gemm_peak.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--sizes", default="2048,3072", help="comma-separated square sizes")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(f"error: --sizes {args.sizes!r}: give integers like 2048,3072", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 1 or args.reps < 1 or args.threads < 1:
        print("error: --sizes, --reps and --threads must be positive", file=sys.stderr)
        return 2
    print(json.dumps(gemm_peak(sizes, threads=args.threads, reps=args.reps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
