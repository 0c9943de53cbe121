"""Check that this environment is exactly requirements.lock, and the lock honours the ranges.

    .venv/bin/python scripts/check_lock.py      # run by `make install` and so `make test`

Two promises, one line each when broken (exit 1):
- every package installed here has the version the lock pins, and nothing outside the lock
  is installed (apart from the toolkit itself, installed editable): a venv changed by hand
  fails loudly instead of testing another stack;
- every range in requirements.txt / requirements-dev.txt admits the version the lock pins:
  a range edited without `make lock` is caught before anyone installs from a stale lock.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
RANGES = (ROOT / "requirements.txt", ROOT / "requirements-dev.txt")
# Installed but legitimately not pinned: the toolkit itself (`pip install -e .`).
NOT_LOCKED = {"vlm-captioning-toolkit"}


def read_lock(path: Path) -> dict[str, Version]:
    """`name==version` pins of a pip-compile output (comments and `--hash` lines skipped)."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        pins[canonicalize_name(name)] = Version(version.split(";")[0].strip().rstrip(" \\"))
    return pins


def read_ranges(paths) -> list[Requirement]:
    reqs = []
    for path in paths:
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                reqs.append(Requirement(line))
    return reqs


def installed() -> dict[str, Version]:
    return {canonicalize_name(d.metadata["Name"]): Version(d.version)
            for d in metadata.distributions()}


def problems(pins: dict[str, Version], have: dict[str, Version],
             ranges: list[Requirement]) -> list[str]:
    """Every way `have` (installed) and `ranges` disagree with `pins` (the lock)."""
    out = []
    for name, version in sorted(pins.items()):
        if name not in have:
            out.append(f"{name}=={version} is locked but not installed")
        elif have[name] != version:
            out.append(f"{name} is {have[name]} here, the lock pins {version}")
    for name in sorted(set(have) - set(pins) - NOT_LOCKED):
        out.append(f"{name}=={have[name]} is installed but not in the lock")
    for req in ranges:
        name = canonicalize_name(req.name)
        if name not in pins:
            out.append(f"{req} is required but the lock has no {name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{req} does not admit the locked {name}=={pins[name]}")
    return out


def main() -> int:
    found = problems(read_lock(LOCK), installed(), read_ranges(RANGES))
    for line in found:
        print(f"lock drift: {line}", file=sys.stderr)
    if found:
        print("fix: `make lock` after editing a range, then `rm -rf .venv && make install` "
              "(or `make install` alone when only the lock changed)", file=sys.stderr)
        return 1
    print(f"environment matches {LOCK.name} ({len(read_lock(LOCK))} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
