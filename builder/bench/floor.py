"""The floor, and boots side by side: what Basalt's boot costs above its own kernel doing nothing.

The floor is the image's own kernel and command line with a one-line init (the image's own
busybox) that prints its uptime and the memory in use, then powers off. Basalt's medium is booted
the same way (``firmware="direct"``: the kernel, initramfs and command line its GRUB gives), so
both start from the same instruction and neither pays for firmware. Boots alternate (floor, Basalt,
any other medium, floor, ...) so that a busy machine slows each alike; medians are reported.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from builder.media import cpio
from builder.vm import bootfiles
from builder.vm.qemu import READY, Guest

LINE = r"floor: uptime=(\d+\.\d+) mem_used_kb=(\d+)(?=\D)"
# The one line; /proc first, for the uptime and /proc/meminfo. MemTotal - MemAvailable, as the
# agent's ready line counts it (agent/system.py mem_used_kb).
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read -r up _ < /proc/uptime
while read -r key value _; do
	case $key in MemTotal:) total=$value ;; MemAvailable:) free=$value ;; esac
done < /proc/meminfo
echo "floor: uptime=$up mem_used_kb=$((total - free))"
exec /bin/busybox poweroff -f
"""
MEMORY_MB = 1024  # as the side-by-side measurement: q35, 1 GiB
# Once ready: `basalt status --json` twice, each timed by the guest's own clock (the shell's read of
# /proc/uptime, no program started): the first reads the command's modules cold, as a monitor's
# first look at a node that just booted does.
STATUS_TWICE = ("read -r a _ < /proc/uptime; basalt status --json > /tmp/bench-status.json; "
                "read -r b _ < /proc/uptime; basalt status --json > /dev/null; read -r c _ < /proc/uptime; "
                'cat /tmp/bench-status.json; echo; echo "status took: $a $b $c"')
TOOK = re.compile(r"status took: ([\d.]+) ([\d.]+) ([\d.]+)\s*$")


def initramfs(busybox: Path) -> bytes:
    """The floor's initramfs: busybox, the init above, /dev/console for its output."""
    out = io.BytesIO()
    cpio.write(out, [cpio.directory("bin"), cpio.directory("dev"), cpio.directory("proc"),
                     cpio.from_host("bin/busybox", busybox), cpio.file("init", INIT.encode(), 0o755),
                     cpio.chardev("dev/console", 5, 1)])
    return gzip.compress(out.getvalue(), 6, mtime=0)


def boot_floor(kernel: Path, initrd: Path, cmdline: str, timeout: float = 120) -> dict[str, Any]:
    with Guest(None, direct=(kernel, initrd, cmdline), memory_mb=MEMORY_MB) as guest:
        m = guest.wait_for(LINE, timeout)
        return {"boot_ms": round(float(m.group(1)) * 1000), "mem_used_kb": int(m.group(2))}


def status_twice(said: str) -> tuple[list[dict[str, Any]], list[int] | None]:
    """From what ``STATUS_TWICE`` printed: the boot timeline (none from a medium older than the
    timeline) and the two runs' milliseconds (None when the shell did not get to the end)."""
    took = TOOK.search(said)
    try:
        status = json.loads(said[:took.start()] if took else said)
    except ValueError:
        status = {}
    at = [float(t) for t in took.groups()] if took else []
    timeline = status.get("timeline", []) if isinstance(status, dict) else []
    return timeline, [round((at[1] - at[0]) * 1000), round((at[2] - at[1]) * 1000)] if at else None


def boot_basalt(medium: Path, timeout: float = 300) -> dict[str, Any]:
    with Guest(medium, firmware="direct", memory_mb=MEMORY_MB) as guest:
        m = guest.wait_for(READY, timeout)
        timeline, status_ms = status_twice(guest.run(STATUS_TWICE))
        return {"boot_ms": int(m.group(2)), "mem_used_kb": int(m.group(3)), "timeline": timeline,
                "status_ms": status_ms}


def side_by_side(medium: Path, busybox: Path, rounds: int = 3, others: dict[str, Path] | None = None) -> dict[str, Any]:
    """``rounds`` boots each of the floor, ``medium`` and ``others`` (name: medium), alternating;
    each one's medians, and Basalt's over the floor's."""
    with tempfile.TemporaryDirectory(prefix="basalt-floor-") as tmp:
        work = Path(tmp)
        kernel, _, cmdline = bootfiles.boot_files(medium, work)
        floor_initrd = work / "floor-initrd.img"
        floor_initrd.write_bytes(initramfs(busybox))
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "basalt": [], **{n: [] for n in others or {}}}
        for _ in range(rounds):
            runs["floor"].append(boot_floor(kernel, floor_initrd, cmdline))
            runs["basalt"].append(boot_basalt(medium))
            for name, other in (others or {}).items():
                runs[name].append(boot_basalt(other))
    out: dict[str, Any] = {"rounds": rounds, "memory_mb": MEMORY_MB}
    for name, boots in runs.items():
        out[name] = {"boot_ms": round(statistics.median(b["boot_ms"] for b in boots)),
                     "mem_used_kb": round(statistics.median(b["mem_used_kb"] for b in boots)),
                     "boots_ms": [b["boot_ms"] for b in boots]}
        if boots and all(b.get("status_ms") for b in boots):
            out[name]["status_first_ms"] = round(statistics.median(b["status_ms"][0] for b in boots))
            out[name]["status_again_ms"] = round(statistics.median(b["status_ms"][1] for b in boots))
    out["timeline"] = runs["basalt"][-1]["timeline"]
    out["ratio"] = round(out["basalt"]["boot_ms"] / out["floor"]["boot_ms"], 2)
    out["mem_above_floor_kb"] = out["basalt"]["mem_used_kb"] - out["floor"]["mem_used_kb"]
    return out
