"""The boot benchmark's reading of a guest's answers (builder/bench/floor.py); the boots themselves
are `inv bench --only boot`, a benchmark, not a test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.bench import floor

STATUS = {"version": "1", "timeline": [{"step": "kernel", "at_ms": 2400, "took_ms": 2400}]}


def test_the_status_and_its_two_timings_are_read_back() -> None:
    said = json.dumps(STATUS, indent=2) + "\n\nstatus took: 12.34 13.27 13.75\n"
    assert floor.status_twice(said) == (STATUS["timeline"], [930, 480])


@pytest.mark.parametrize(("said", "expected"), [
    ("", ([], None)),  # nothing came back
    (json.dumps({"version": "0.1"}) + "\nstatus took: 1.00 1.50 1.70", ([], [500, 200])),  # no timeline yet
    (json.dumps(STATUS), (STATUS["timeline"], None)),  # the shell did not get to the end
    ("basalt: command not found\nstatus took: 1.00 1.01 1.02", ([], [10, 10])),
    ("[1, 2]\nstatus took: 1.00 1.01 1.02", ([], [10, 10])),  # JSON, but not a status
])
def test_odd_answers(said: str, expected: tuple[object, object]) -> None:
    assert floor.status_twice(said) == expected


def test_the_timing_line_is_what_busybox_sh_prints(tmp_path: Path) -> None:
    """STATUS_TWICE run by this host's busybox sh (the guest's shell), with a stand-in `basalt` on
    its PATH (the real one needs a booted node: `inv bench`) and the real /proc/uptime."""
    bin_dir = tmp_path
    fake = bin_dir / "basalt"
    fake.write_text("#!/bin/sh\necho '" + json.dumps(STATUS) + "'\n")
    fake.chmod(0o755)
    said = subprocess.run(["busybox", "sh", "-c", floor.STATUS_TWICE.replace("/tmp/bench-status.json",
                                                                            str(bin_dir / "s.json"))],
                          capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=30).stdout
    timeline, status_ms = floor.status_twice(said)
    assert timeline == STATUS["timeline"]
    assert status_ms is not None and all(0 <= ms < 5000 for ms in status_ms)
