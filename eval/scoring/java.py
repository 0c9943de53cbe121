"""Java and pycocoevalcap's jars: where they are, whether they run, and SPICE's availability."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from captioning.errors import UserError

JAVA_INSTALL_HINT = ("install Java 8+ (Debian/Ubuntu: apt-get install default-jre-headless) "
                     "and make sure `java` is on PATH")


def package_dir() -> Path:
    """pycocoevalcap's folder (its jars live below it)."""
    # pycocoevalcap has no __init__.py (a namespace package): locate it through a module.
    import pycocoevalcap.meteor.meteor as meteor_module

    return Path(meteor_module.__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def java() -> tuple[str, int, str]:
    """(path, major version, version line) of the java on PATH; UserError if unusable."""
    found = shutil.which("java")
    if found is None:
        raise UserError("Java not found: COCO caption metrics run Stanford PTBTokenizer and "
                        f"METEOR on Java; {JAVA_INSTALL_HINT}")
    try:
        out = subprocess.run([found, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot run {found} -version ({e}); {JAVA_INSTALL_HINT}") from None
    text = (out.stderr or out.stdout).strip()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if out.returncode != 0 or m is None:
        first = text.splitlines()[0] if text else f"exit code {out.returncode}"
        raise UserError(f"{found} does not work ({first}); {JAVA_INSTALL_HINT}")
    major = int(m.group(1))
    if major == 1:  # "1.8.0_392" style
        major = int(m.group(2) or 0)
    if major < 8:
        raise UserError(f"Java {major} is too old for METEOR 1.5 / PTBTokenizer; "
                        f"{JAVA_INSTALL_HINT}")
    return found, major, text.splitlines()[0]


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or None if it can be attempted.

    Checked cheaply (files and the Java version), never by starting SPICE: pycocoevalcap's
    Spice() downloads Stanford CoreNLP on first use, which must not happen silently.
    """
    lib = package_dir() / "spice" / "lib"
    missing = [j for j in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
               if not (lib / j).is_file()]
    if missing:
        return (f"needs Stanford CoreNLP 3.6.0 ({', '.join(missing)}) in {lib}; pycocoevalcap "
                "would download it (~1 GB) from nlp.stanford.edu on first use, which is not "
                "attempted here")
    try:
        _, major, _ = java()
    except UserError as e:
        return str(e)
    if major > 8:
        return (f"SPICE 1.0 needs Java 8 and is known to fail on newer Java without extra "
                f"--add-opens flags (found Java {major})")
    return None


def spice(gts: dict, res: dict, keys: list) -> tuple[float, list[float]]:
    """pycocoevalcap's SPICE: (corpus score, per-image scores in ``keys`` order)."""
    from pycocoevalcap.spice.spice import Spice

    sub_g = {k: gts[k] for k in keys}
    sub_r = {k: res[k] for k in keys}
    corpus, scores = Spice().compute_score(sub_g, sub_r)
    order = sorted(keys)  # Spice returns scores in sorted-id order
    by_id = {k: s["All"]["f"] for k, s in zip(order, scores)}
    return float(corpus), [float(by_id[k]) for k in keys]
