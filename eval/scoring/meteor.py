"""METEOR through pycocoevalcap's jar (``meteor-1.5.jar -stdio``), pipelined and exact.

pycocoevalcap's Meteor makes one round trip per image; here every request goes out at once
and answers are read in large chunks, over one JVM or several (``Scorer(meteor_jvms=N)``),
with the corpus score computed from the same statistics (see :class:`MeteorPool`).
"""

from __future__ import annotations

import os
import queue
import subprocess
import tempfile
import threading
import time

from eval.scoring.java import java, package_dir


class MeteorJVM:
    """One ``meteor-1.5.jar -stdio`` process, started with pycocoevalcap's command."""

    def __init__(self):
        java_path, _, _ = java()
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [java_path, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=package_dir() / "meteor", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, bufsize=0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:  # Linux: 1 MiB pipes, so neither side stalls (and wakes the other) per 64 KiB
                import fcntl

                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            except (ImportError, AttributeError, OSError):
                pass
        self.lock = threading.Lock()  # one request at a time: answers come back in order
        self.ready = threading.Event()
        self.error: BaseException | None = None
        # The jar reads stdin only once its paraphrase table is loaded (the floor of a fresh
        # run: BENCHMARKS.md, "Scoring: `eval.scoring.score` vs naive pycocoevalcap"):
        # a tiny request answered means "loaded", so work goes only to JVMs that can take it
        # now instead of queueing behind a load.
        threading.Thread(target=self._probe, daemon=True, name="meteor-probe").start()

    def _probe(self) -> None:
        try:
            self.request(b"SCORE ||| a ||| a\n", 1)
            self.ready.set()
        except BaseException as e:  # reported by the pool when it needs this JVM
            self.error = e

    def alive(self) -> bool:
        """True while the JVM process runs."""
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "no output on stderr"
        except (OSError, ValueError):
            return "stderr unavailable"

    def request(self, payload: bytes, n_lines: int) -> list[str]:
        """Send ``payload`` and return the next ``n_lines`` lines of output.

        Writing all lines at once (from a helper thread, so a full pipe cannot deadlock)
        instead of one round trip per image is what pycocoevalcap's Meteor does not do;
        reading in large chunks needs the GIL once per chunk rather than once per line.
        """
        with self.lock:
            return self._request(payload, n_lines)

    def _request(self, payload: bytes, n_lines: int) -> list[str]:
        failure: list = []

        def write():
            view = memoryview(payload)
            try:
                while view:
                    view = view[self.proc.stdin.write(view):]
            except (BrokenPipeError, OSError, ValueError) as e:
                failure.append(e)

        writer = threading.Thread(target=write, daemon=True, name="meteor-writer")
        writer.start()
        fd = self.proc.stdout.fileno()
        chunks, count = [], 0
        while count < n_lines:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                writer.join()
                raise RuntimeError(f"METEOR JVM exited (code {self.proc.poll()}): "
                                   f"{self._stderr_tail()}")
            chunks.append(chunk)
            count += chunk.count(b"\n")
            if count < n_lines and len(chunk) < 1 << 15:
                # The jar flushes every line. Waking up for each one costs a GIL hand-over
                # (a switch interval while the caller's thread computes the other metrics):
                # let answers pile up instead.
                time.sleep(0.01)
        writer.join()
        if failure:
            raise RuntimeError(f"writing to METEOR failed: {failure[0]}")
        lines = b"".join(chunks).decode().split("\n")
        if count != n_lines or lines[-1]:
            raise RuntimeError(f"METEOR protocol out of sync: expected {n_lines} lines, "
                               f"got {count}")
        return lines[:n_lines]

    def close(self) -> None:
        """Stop the JVM now: it holds no state worth flushing, and an orderly JVM shutdown
        (SIGTERM) is slow enough to be the whole tail of a one-shot score()."""
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, self._stderr):
            try:
                f.close()
            except (OSError, AttributeError):
                pass


class MeteorPool:
    """METEOR over ``n`` JVMs with results identical to pycocoevalcap's Meteor.

    pycocoevalcap sends one ``SCORE`` line per image (the JVM answers with that image's
    statistics) and then one ``EVAL`` line with all statistics: the JVM prints each image's
    score and finally the corpus score, computed from the field-wise SUM of the statistics
    (MeteorStats.addStats). Here:

    * ``SCORE`` lines may go to any JVM: an image's statistics depend only on its line.
    * per-image scores come from ``EVAL`` over the distinct statistics strings, spread over
      the JVMs (the jar parses each with java.util.Scanner, which was the slowest single
      step after loading).
    * every statistic is an integer count (lengths, matches per stage, chunks), so the sum
      is exact in any order. It is summed here with addStats' rule (see :meth:`_sum_stats`)
      and sent as one ``EVAL`` whose corpus line is the same computeMetrics() on the same
      numbers. If a line ever has another shape or a non-integer, the full ``EVAL`` is sent
      instead, exactly as pycocoevalcap does.
    """

    def __init__(self, n: int = 1):
        self.n = n
        self.jvms: list[MeteorJVM] = []

    def loaded(self) -> bool:
        """True once every JVM has finished loading (or failed to)."""
        return all(j.ready.is_set() or j.error is not None or not j.alive() for j in self.jvms)

    def start(self) -> None:
        """Start missing or dead JVMs (non-blocking: they load in the background)."""
        for jvm in [j for j in self.jvms if not j.alive()]:
            jvm.close()
            self.jvms.remove(jvm)
        while len(self.jvms) < self.n:
            self.jvms.append(MeteorJVM())

    def _map(self, items: list[str], build, lines_per_item, extra: int = 0) -> list[str]:
        """Send ``items`` in chunks to whichever loaded JVM is free; results in input order."""
        if not items:
            return []
        # Small chunks let a JVM that finishes loading late still take a share, and bound
        # the wait for the last chunk; a request's own overhead is small next to its work
        # (METEOR's share of scoring: BENCHMARKS.md, "Scoring: `eval.scoring.score` vs naive
        # pycocoevalcap").
        size = max(50, min(2000, len(items) // (8 * len(self.jvms)) + 1))
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for start in range(0, len(items), size):
            # Built here, not in the JVM threads: the caller's thread holds the GIL while it
            # computes the other metrics, and each GIL hand-over can wait a switch interval.
            todo.put((start, build(items[start:start + size])))
        results: list = [None] * len(items)
        errors: list = []

        def work(jvm: MeteorJVM):
            # Wait for this JVM to finish loading, unless the others take all the work first.
            while not jvm.ready.wait(0.05):
                if jvm.error is not None or todo.empty() or errors:
                    return
            while not errors:
                try:
                    start, payload = todo.get_nowait()
                except queue.Empty:
                    return
                n_items = min(size, len(items) - start)
                try:
                    out = jvm.request(payload, lines_per_item * n_items + extra)
                except BaseException as e:  # surfaced below
                    errors.append(e)
                    return
                results[start:start + n_items] = out[:n_items]

        threads = [threading.Thread(target=work, args=(j,), daemon=True, name="meteor")
                   for j in self.jvms]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if not todo.empty():  # every JVM failed while loading
            failed = [j.error for j in self.jvms if j.error is not None]
            raise RuntimeError(f"METEOR could not start: {failed[0] if failed else 'unknown'}")
        return results

    def compute(self, gts: dict, res: dict, keys: list) -> tuple[float, list[float]]:
        """(corpus METEOR, per-image METEOR) exactly as Meteor().compute_score(gts, res)."""
        if not self.jvms:
            self.start()
        lines = []
        for k in keys:
            assert len(res[k]) == 1
            hypothesis = res[k][0].replace("|||", "").replace("  ", " ")
            lines.append(" ||| ".join(("SCORE", " ||| ".join(gts[k]), hypothesis)))
        stats = [s.strip() for s in self._map(
            lines, lambda chunk: "".join(f"{line}\n" for line in chunk).encode(), 1)]

        distinct = list(dict.fromkeys(stats))
        seg = self._map(distinct,
                        lambda chunk: ("EVAL ||| " + " ||| ".join(chunk) + "\n").encode(), 1, 1)
        score_of = {s: float(v.strip()) for s, v in zip(distinct, seg)}
        per_image = [score_of[s] for s in stats]

        total = self._sum_stats(stats)
        jvm = next(j for j in self.jvms if j.ready.is_set())
        if total is not None:
            # The first answer is computeMetrics(total), what pycocoevalcap's final line is.
            corpus = jvm.request(f"EVAL ||| {total}\n".encode(), 2)[0]
        else:
            eval_line = "EVAL ||| " + " ||| ".join(stats) + "\n"
            corpus = jvm.request(eval_line.encode(), len(stats) + 1)[-1]
        return float(corpus.strip()), per_image

    @staticmethod
    def _sum_stats(stats: list[str]) -> str | None:
        """MeteorStats.addStats over all lines, or None when it cannot be done exactly here.

        Fields: test/ref length, test/ref function words, 4 stages x (test content, ref
        content, test function, ref function) matches, chunks, test/ref word matches. Like
        addStats, chunks are not added for a segment that matches perfectly (all words of
        both sides matched in one chunk).
        """
        sums = [0] * 23
        for s in stats:
            fields = s.split()
            if len(fields) != 23:
                return None
            values = []
            for f in fields:
                x = float(f)
                if not x.is_integer() or abs(x) >= 2**52:
                    return None
                values.append(int(x))
            test_matches = sum(values[4 + 4 * i] + values[6 + 4 * i] for i in range(4))
            ref_matches = sum(values[5 + 4 * i] + values[7 + 4 * i] for i in range(4))
            perfect = (test_matches == values[0] and ref_matches == values[1]
                       and values[20] == 1)
            for i, v in enumerate(values):
                if i != 20 or not perfect:
                    sums[i] += v
        # Plain decimals ("123.0"), which java.util.Scanner.nextDouble reads back exactly.
        return " ".join(f"{x}.0" for x in sums)

    def close(self) -> None:
        """Stop every JVM (a later :meth:`start` starts new ones)."""
        for jvm in self.jvms:
            jvm.close()
        self.jvms = []


