"""Thin wrappers over the system calls PID 1 needs (no fork/exec of tools)."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
RB_AUTOBOOT, RB_HALT, RB_POWER_OFF, RB_DISABLE_CAD = 0x01234567, 0xCDEF0123, 0x4321FEDC, 0
MNT_DETACH = 2


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None),
           f"mount {fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def is_mounted(target: str) -> bool:
    try:
        return any(line.split()[1] == target for line in Path("/proc/self/mounts").read_text().splitlines())
    except OSError:
        return False


def mounts() -> list[tuple[str, str, str]]:
    """(source, target, fstype) of every mount, innermost last."""
    rows = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target, fstype = line.split()[:3]
        rows.append((source, target.replace("\\040", " "), fstype))
    return rows


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname")


def reboot(cmd: int) -> None:
    _check(_libc.reboot(ctypes.c_int(cmd & 0xFFFFFFFF if cmd < 0x80000000 else cmd - (1 << 32))), "reboot")


def boot_ms() -> int:
    """Milliseconds since the kernel started."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0])
    return out


def mem_used_kb() -> int:
    info = meminfo()
    return info["MemTotal"] - info.get("MemAvailable", info["MemFree"])
