"""The test suite's own timing report (tests/conftest.py): ``./inv test`` runs on every core and
ends with each tier's wall time and the 25 slowest tests, and keeps each test's duration for the
next run's order. Checked by running the command's pytest on two small real modules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from invoke import MockContext, Result

import tasks
from tests.conftest import DURATIONS, ROOT


def test_inv_test_runs_every_core_and_asks_for_the_slowest() -> None:
    c = MockContext(run=Result(""), repeat=True)
    tasks.test(c, tier="unit")
    pytest_run = c.run.call_args_list[-1].args[0]  # lint runs first
    assert " -m pytest -n " in pytest_run and "--dist loadgroup" in pytest_run
    assert "--durations=25" in pytest_run and pytest_run.endswith("-m unit")


def test_the_report_lists_each_tier_and_the_slowest_tests(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--durations=25",
            "-o", f"cache_dir={tmp_path / 'cache'}",
            "tests/unit/agent/test_layout.py", "tests/unit/builder/vm/test_bootfiles.py"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    tiers = out[out.index("time per tier"):]
    line = r"^unit +4 tests +wall +\d+\.\d s +\(from \d\d:\d\d:\d\d; test time +\d+\.\d s\)$"
    assert re.search(line, tiers, re.M), tiers
    slowest = out[out.index("slowest 25 durations"):]
    assert re.search(r"^\d+\.\d\ds call +tests/unit/agent/test_layout\.py::test_", slowest, re.M), slowest
    kept = json.loads((tmp_path / "cache" / "v" / DURATIONS).read_text())
    assert sorted(k.split("::")[0] for k in kept) == ["tests/unit/agent/test_layout.py"] * 2 + \
        ["tests/unit/builder/vm/test_bootfiles.py"] * 2
