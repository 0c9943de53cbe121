"""Load generator for the Space's load test, run as its own process so the clients do not
share the server's interpreter (GIL, memory):

    python tests/space/load_clients.py URL MODEL IMAGE [IMAGE...] --clients 16 --requests 10 \
        [--expect '{"IMAGE": "caption", ...}'] [--request-timeout 240]

Prints one JSON line: ok, failures (first few messages), latencies. A request fails when it
raises, takes longer than --request-timeout, or (with --expect) answers anything but the
expected caption for its image. The network guard is installed here too: the clients may
only talk to loopback. The Space's load test asserts on ok/failures; bench/space_load.py
reports the latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from tests.space.helpers import NetworkGuard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--expect", type=json.loads, default=None,
                    help="JSON object: image path -> the caption every request for it must return")
    ap.add_argument("--request-timeout", type=float, default=240.0,
                    help="seconds one request may take, queueing included (generous: a busy 2-core machine "
                         "serving 16 clients is slow, and a slow answer is not a wrong one)")
    args = ap.parse_args(argv)
    guard = NetworkGuard().install()
    from gradio_client import Client, handle_file

    failures: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    start_line = threading.Barrier(args.clients)

    def worker(i: int) -> None:
        try:
            # gradio_client's own HTTP timeout (20 s for uploads) is shorter than a busy machine needs
            client = Client(args.url, analytics_enabled=False, verbose=False,
                            httpx_kwargs={"timeout": args.request_timeout})
        except Exception as e:
            with lock:
                failures.extend([f"client {i}: {e!r}"] * args.requests)
            start_line.abort()
            return
        try:
            start_line.wait(timeout=120)  # all clients fire together
        except threading.BrokenBarrierError:
            pass
        for j in range(args.requests):
            t = time.perf_counter()
            image = args.images[(i + j) % len(args.images)]
            try:
                job = client.submit(handle_file(image), args.model, "", args.max_new_tokens, 1, 0, 1, 1, -1,
                                    api_name="/caption")
                text, _ = job.result(timeout=args.request_timeout)
                if not isinstance(text, str) or not text:
                    raise ValueError(f"empty caption {text!r}")
                if args.expect is not None and text != args.expect[image]:
                    raise ValueError(f"caption {text!r} for {Path(image).name}, expected {args.expect[image]!r}")
            except Exception as e:
                with lock:
                    failures.append(f"client {i} request {j}: {e!r}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    guard.uninstall()
    print(json.dumps({"ok": len(latencies), "failures": len(failures), "first_failures": failures[:5],
                      "wall_s": wall, "latencies": sorted(latencies), "guard_violations": guard.violations}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
