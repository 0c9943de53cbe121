"""What machine a benchmark ran on, from /proc/cpuinfo: shared by the bench scripts."""

from __future__ import annotations

import platform
from pathlib import Path

#: the instruction-set features the CPU numbers depend on (int8 VNNI, native bf16, AMX)
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_flags() -> set[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def reported_flags() -> dict[str, bool]:
    """REPORTED_FLAGS as yes/no, plus ``amx`` for any AMX feature."""
    flags = cpu_flags()
    return {f: f in flags for f in REPORTED_FLAGS} | {"amx": any(f.startswith("amx") for f in flags)}
