"""Power: the signals the kernel and tools send PID 1 (busybox/sysvinit conventions), routed
through a self-pipe into the main loop, and the clean shutdown — services stopped, every
filesystem unmounted, then halt, power off or reboot."""

from __future__ import annotations

import _signal
import os
import time

from agent import system
from agent.log import log
from agent.pid1.supervise import HANDLED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.pid1.supervise import Supervisor

# system.POWER_SIGNALS turned round, and what else asks: a UPS daemon's SIGPWR, Ctrl-Alt-Del's SIGINT.
ACTIONS = {**{sig: action for action, sig in system.POWER_SIGNALS.items()},
           _signal.SIGPWR: "poweroff", _signal.SIGINT: "reboot"}
STOP_GRACE_S = 3.0
KEEP_MOUNTED = ("/", "/proc", "/sys", "/dev", "/run")


def install_signals() -> int:
    """Every handled signal wakes the loop: its number is written to the returned pipe."""
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(wfd)
    for sig in HANDLED:
        _signal.signal(sig, lambda *_: None)
    return rfd


def shutdown(action: str, supervisor: Supervisor) -> None:
    log(f"stopping services ({action})")
    supervisor.stop_all(STOP_GRACE_S)
    os.sync()
    for _, target, fstype in reversed(system.mounts()):
        if target not in KEEP_MOUNTED and fstype not in ("proc", "sysfs", "devtmpfs"):
            try:
                system.umount(target, system.MNT_DETACH)
            except OSError:
                pass
    os.sync()
    log(f"{action} now")
    system.reboot(action)
    while True:  # reboot(2) does not return; if it fails we must still not exit
        time.sleep(60)
