"""requirements.lock: the checker that `make install` runs catches every kind of drift, and
the checked-in lock honours the ranges in requirements*.txt."""

import importlib.util
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)


def test_the_lock_pins_every_range_and_torch_is_the_cpu_wheel():
    pins = check_lock.read_lock(check_lock.LOCK)
    ranges = check_lock.read_ranges(check_lock.RANGES)
    assert check_lock.problems(pins, pins, ranges) == []
    assert {"torch", "transformers", "gradio", "pytest", "pip-tools"} <= set(pins)
    assert pins["torch"].local == "cpu"  # the CPU wheel: no nvidia-* packages ride along
    assert not [name for name in pins if name.startswith("nvidia")]


def test_drift_is_reported_one_line_each():
    pins = {"torch": Version("2.13.0+cpu"), "numpy": Version("2.4.6"), "click": Version("8.5.1")}
    have = {"torch": Version("2.13.0+cpu"), "numpy": Version("2.4.5"), "six": Version("1.16.0"),
            "vlm-captioning-toolkit": Version("0.1.0")}
    ranges = [Requirement("numpy>=3"), Requirement("click>=8.1"), Requirement("rich>=13")]
    assert check_lock.problems(pins, have, ranges) == [
        "click==8.5.1 is locked but not installed",
        "numpy is 2.4.5 here, the lock pins 2.4.6",
        "six==1.16.0 is installed but not in the lock",
        "numpy>=3 does not admit the locked numpy==2.4.6",
        "rich>=13 is required but the lock has no rich",
    ]


def test_read_lock_takes_pins_and_skips_comments(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# via make lock\nTorch==2.13.0+cpu\n    # via -r requirements.txt\n"
                    "typing_extensions==4.16.0 \\\n    --hash=sha256:abc\n")
    assert check_lock.read_lock(lock) == {"torch": Version("2.13.0+cpu"), "typing-extensions": Version("4.16.0")}
