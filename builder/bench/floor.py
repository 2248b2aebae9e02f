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
import statistics
import tempfile
from pathlib import Path
from typing import Any

from builder.media import cpio
from builder.vm import bootfiles
from builder.vm.qemu import READY, Guest

LINE = r"floor: uptime=(\d+\.\d+) mem_used_kb=(\d+)"
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


def boot_basalt(medium: Path, timeout: float = 300) -> dict[str, Any]:
    with Guest(medium, firmware="direct", memory_mb=MEMORY_MB) as guest:
        m = guest.wait_for(READY, timeout)
        try:  # the timeline (basalt status --json); a medium older than the timeline has none
            timeline = json.loads(guest.run("basalt status --json")).get("timeline", [])
        except ValueError:
            timeline = []
        return {"boot_ms": int(m.group(2)), "mem_used_kb": int(m.group(3)), "timeline": timeline}


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
    out["timeline"] = runs["basalt"][-1]["timeline"]
    out["ratio"] = round(out["basalt"]["boot_ms"] / out["floor"]["boot_ms"], 2)
    out["mem_above_floor_kb"] = out["basalt"]["mem_used_kb"] - out["floor"]["mem_used_kb"]
    return out
