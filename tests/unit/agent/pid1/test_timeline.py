"""The boot timeline (agent/pid1/status.timeline): the initramfs's marks, the interpreter's start,
the agent's phases and ready, as exact tables; what the initramfs wrote is read bounded and junk
is left out."""

from __future__ import annotations

import pytest

from agent.cli import boot_timeline
from agent.pid1.status import timeline

PHASES = {"python_start_ms": 6610, "agent_start_ms": 9000, "state_done_ms": 9100, "coldplug_done_ms": 11000,
          "network_done_ms": 11200, "runtime_modules_done_ms": 30000}
MARKS = "init=3.04 modules=5.10 medium=5.30 root=5.42 state=5.50 switch_root=5.61 "


def test_the_timeline_from_the_kernel_to_ready() -> None:
    got = timeline(MARKS, PHASES, 12000)
    assert [(t["step"], t["at_ms"], t["took_ms"]) for t in got] == [
        ("kernel (to the initramfs's /init)", 3040, 3040), ("initramfs: modules", 5100, 2060),
        ("initramfs: boot medium found", 5300, 200), ("initramfs: root mounted", 5420, 120),
        ("initramfs: state partition", 5500, 80), ("initramfs: mounts and switch_root", 5610, 110),
        ("interpreter start (switch_root to Python's first line)", 6610, 1000),
        ("interpreter: the agent's imports (to its first line)", 9000, 2390),
        ("agent: state", 9100, 100), ("agent: coldplug", 11000, 1900), ("agent: network", 11200, 200),
        ("ready", 12000, 800)]  # the runtime phase, after ready, is not on the way to it
    assert sum(t["took_ms"] for t in got) == 12000  # type: ignore[misc]
    assert boot_timeline(got) == "kernel 3.0 s, initramfs 2.6 s, interpreter 3.4 s, agent 3.0 s"


@pytest.mark.parametrize(("marks", "steps"), [
    ("", 0),  # an initramfs from before the timeline: the agent's part only
    ("init=x modules= =1 junk switch_root=5.6", 1),
    ("init=1 init=2", 1),  # a step once
    ("init=1 " * 10000, 1),  # bounded
    ("evil=1 $(reboot)=2", 0),
])
def test_what_the_initramfs_wrote_is_read_with_care(marks: str, steps: int) -> None:
    got = timeline(marks, {"agent_start_ms": 9000}, 9500)
    assert len(got) == steps + 2 and got[-1] == {"step": "ready", "at_ms": 9500, "took_ms": 500}
