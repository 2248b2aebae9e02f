"""The system calls PID 1 needs that Python's os module lacks (mount, reboot).

ctypes is imported on first use only: the normal boot never needs it (the
initramfs mounts everything), and importing it costs noticeable time on slow
boards.
"""

from __future__ import annotations

import _signal
import os
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MNT_DETACH = 2
REBOOT = {"reboot": 0x01234567, "halt": 0xCDEF0123 - (1 << 32), "poweroff": 0x4321FEDC}
# How anything asks PID 1 to end the node cleanly (busybox/sysvinit conventions; PID 1 also takes
# SIGPWR and Ctrl-Alt-Del's SIGINT: agent/pid1/power.py).
POWER_SIGNALS = {"poweroff": _signal.SIGUSR2, "reboot": _signal.SIGTERM, "halt": _signal.SIGUSR1}


def request_power(action: str) -> None:
    """Ask PID 1 to ``action`` ("poweroff", "reboot", "halt") the node: it stops every service and
    unmounts first."""
    os.kill(1, POWER_SIGNALS[action])

# (source, target, fstype, flags, data): what PID 1 needs mounted before anything runs.
EARLY_MOUNTS = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
    ("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, "nsdelegate"),
)

_libc = None  # no typing import: it alone costs a tenth of a second on the boot path


def libc():  # type: ignore[no-untyped-def]
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None),
           f"mount {fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(libc().umount2(target.encode(), flags), f"umount {target}")


def mounts() -> list[tuple[str, str, str]]:
    """(source, target, fstype) of every mount, in mount order."""
    rows = []
    with open("/proc/self/mounts") as f:
        for line in f:
            source, target, fstype = line.split()[:3]
            rows.append((source, target.replace("\\040", " "), fstype))
    return rows


def is_mounted(target: str) -> bool:
    try:
        return any(t == target for _, t, _ in mounts())
    except OSError:
        return False


def reboot(action: str) -> None:
    _check(libc().reboot(REBOOT[action]), action)


def disable_ctrl_alt_del() -> None:
    """Ctrl-Alt-Del then sends SIGINT to PID 1 (a clean reboot) instead of resetting at once."""
    with open("/proc/sys/kernel/ctrl-alt-del", "w") as f:
        f.write("0\n")


def hosts_text(hostname: str) -> str:
    """/etc/hosts for this node: loopback names and the host name on 127.0.1.1."""
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"


def boot_ms() -> int:
    """Milliseconds since the kernel started."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def mem_used_kb() -> int:
    """MemTotal - MemAvailable: memory the system cannot give back."""
    info = meminfo()
    return info["MemTotal"] - info.get("MemAvailable", info["MemFree"])


def output(argv: list[str], timeout: float = 10.0, limit: int = 1 << 20) -> str | None:
    """A program's standard output (stderr discarded, no input), or None when it cannot be started,
    fails, writes more than ``limit`` bytes or runs past ``timeout`` seconds (then it is killed).
    Without the subprocess module, whose import (locale, re, enum, threading) is 0.3 s of a node's
    first ``basalt status`` under emulation. Not for PID 1, whose reaper takes every child."""
    import select
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0), (os.POSIX_SPAWN_CLOSE, read_end),
            (os.POSIX_SPAWN_CLOSE, write_end)])
    except OSError:
        os.close(read_end)
        return None
    finally:
        os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb", buffering=0) as out:
        while (left := deadline - time.monotonic()) > 0 and select.select([out], [], [], left)[0]:
            chunk = out.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            limit -= len(chunk)
            if limit < 0:
                deadline = 0.0  # too much: killed below
                break
    while not (ended := os.waitpid(pid, os.WNOHANG))[0]:  # its output closed: its exit, within the time
        if time.monotonic() > deadline:
            os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)
    if os.waitstatus_to_exitcode(ended[1]) != 0 or limit < 0:
        return None
    return b"".join(chunks).decode(errors="replace")
