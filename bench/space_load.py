"""How fast does the Space answer many clients at once?

    python bench/space_load.py [--clients 16] [--requests 10] [--out bench/results/space_load.json]
    python bench/space_load.py --quick        # 4 clients x 3 requests: checks the script runs

The same traffic as the Space's load test (tests/space/load_clients.py, from a second
process): N gradio_client clients fire caption requests at once at the Space serving a
tiny random SmolVLM-architecture model (greedy, 4 new tokens, the app's default queue:
2 concurrent jobs). The test asserts that every answer is right; this script reports how
long they took (p50 / p95 / max latency, requests per second) and the server's memory.
Latency here is mostly queueing: one request computes in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(len(values) * q))], 3) if values else None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--quick", action="store_true", help="4 clients x 3 requests")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "space_load.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 4, 3
    from captioning.files import write_json
    from synthetic.factory import build_random_model
    from synthetic.shapes import generate
    from tests.space.helpers import PeakRSS, free_port, load_app_module

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tmp) / "gradio"))
        model = build_random_model("idefics3", Path(tmp) / "tiny-smolvlm")
        shapes = generate(Path(tmp) / "shapes", n_train=0, n_val=0, n_test=3)
        images = sorted((shapes / "images" / "test").glob("*.png"))
        app = load_app_module()
        demo = app.build_demo([str(model)], concurrency_limit=2, max_queue=64)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **app.launch_kwargs())
        try:
            with PeakRSS() as rss:
                run = subprocess.run([sys.executable, str(REPO / "tests" / "space" / "load_clients.py"), url,
                                      model.name, *map(str, images), "--clients", str(args.clients), "--requests",
                                      str(args.requests)], capture_output=True, text=True, timeout=1800)
        finally:
            demo.close()
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        return 1
    out = json.loads(run.stdout.strip().splitlines()[-1])
    lat = out["latencies"]
    result = {
        "question": "latency of the Space's caption endpoint under concurrent clients",
        "clients": args.clients, "requests": args.clients * args.requests, "ok": out["ok"],
        "failures": out["failures"], "first_failures": out["first_failures"], "wall_s": round(out["wall_s"], 2),
        "req_per_s": round(out["ok"] / out["wall_s"], 2) if out["wall_s"] else None,
        "p50_s": _percentile(lat, 0.5), "p95_s": _percentile(lat, 0.95), "max_s": _percentile(lat, 1.0),
        "server_rss_before_mb": round(rss.before / 2**20), "server_rss_peak_mb": round(rss.peak / 2**20),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0 if out["failures"] == 0 else 1


if __name__ == "__main__":
    if str(REPO) not in sys.path:  # run as a script from a checkout: import the toolkit beside it
        sys.path.insert(0, str(REPO))
    sys.exit(main())
