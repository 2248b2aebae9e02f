"""Devices: the kernel command line, driver coldplug (udev's job, done with busybox modprobe)
and hotplug, the console terminals, and the power button.

Standard library C modules only: it is on the boot path.
"""

from __future__ import annotations

import os
import struct

from agent import layout
from agent.files import read_text
from agent.log import log
from agent.pid1 import hotplug, modalias
from agent.pid1.supervise import Service, spawn

TYPE_CHECKING = False  # typing is not imported on the boot path
if TYPE_CHECKING:
    from collections.abc import Callable

KEY_POWER = 116
EV_KEY = 1
INPUT_EVENT = struct.Struct("llHHi")


def consoles(args: dict[str, str]) -> list[str]:
    """Terminal devices for console shells, from console= (tty0 means the first VT)."""
    names: list[str] = []
    for value in args.get("console", "").split():
        dev = value.split(",")[0]
        dev = "tty1" if dev == "tty0" else dev
        if dev not in names:
            names.append(dev)
    return [f"/dev/{n}" for n in names] or ["/dev/console"]


def console_services(args: dict[str, str], mode: str) -> list[Service]:
    """A root shell on each console of a live boot (unless basalt.console=login), else a getty."""
    autologin = mode == "live" and args.get("basalt.console") != "login"
    out = []
    for tty in consoles(args):
        name = "console-" + os.path.basename(tty)
        if autologin:
            out.append(Service(name, ["/bin/sh", "-l"], tty=tty, env={"BASALT_CONSOLE": "1"}))
        else:
            out.append(Service(name, ["/usr/bin/getty", "-L", "115200", os.path.basename(tty), "vt100"]))
    return out


def device_aliases(sys_root: str = "/sys", buses: tuple[str, ...] = ()) -> list[str]:
    """The modalias of every device present now (on ``buses``, or all)."""
    out = set()
    bus_root = sys_root + "/bus"
    for bus in buses or (sorted(os.listdir(bus_root)) if os.path.isdir(bus_root) else []):
        devices = f"{bus_root}/{bus}/devices"
        for dev in sorted(os.listdir(devices)) if os.path.isdir(devices) else []:
            value = read_text(f"{devices}/{dev}/modalias").strip()
            if value:
                out.add(value)
    return sorted(out)


def loaded_modules() -> set[str]:
    return {line.split()[0] for line in read_text("/proc/modules").splitlines() if line.strip()}


def modules_dir() -> str:
    return f"/usr/lib/modules/{os.uname().release}"


def start_modprobe(names: Callable[[], list[str]]) -> int:
    """busybox modprobe -a for the modules ``names()`` gives, called in the child (its matching
    work and memory never stay in PID 1); its pid. Drivers that find no device of theirs (e.g.
    cpufreq in a VM) refuse to load: not an error, so quiet."""
    def argv() -> list[str] | None:
        wanted = names()
        return [layout.BUSYBOX, "modprobe", "-a", "-q", *wanted] if wanted else None
    return spawn(argv, env={"BASALT_QUIET": "1"})


def reap(pid: int | None) -> None:
    if pid is not None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped (PID 1's loop reaps any child)
            pass


class Coldplug:
    def __init__(self, index_path: str | None = None) -> None:
        # a run started with wait=False: (modprobe's pid, the modules before it)
        self.running: tuple[int | None, set[str]] | None = None
        self.seen_aliases: list[str] = []
        self.deferred: list[str] = []  # aliases whose late drivers wait for the run after ready
        self.index_path = index_path or f"{modules_dir()}/{modalias.INDEX}"

    def names(self, aliases: list[str], early_only: bool = False, also: tuple[str, ...] = ()) -> list[str]:
        """The modules ``aliases`` want, and ``also``. From the build's index by module name
        (``early_only``: only what ready needs), read here and dropped (a megabyte); without one,
        the aliases themselves, for modprobe to match (another kernel's tree)."""
        index = modalias.load(self.index_path)
        if index is None:
            return [*aliases, *also]
        early, late = modalias.resolve(index, aliases, early_only)
        return [*early, *late, *also]

    def load(self, aliases: list[str], early_only: bool = False, also: tuple[str, ...] = ()) -> int:
        """Start modprobe for what ``aliases`` want and the modules ``also`` names (its pid): the
        index is read and matched in the child (``names``)."""
        return start_modprobe(lambda: self.names(aliases, early_only, also))

    def run(self, passes: int = 1, before_ready: bool = False, wait: bool = True) -> bool:
        """Load a driver for every device present (``before_ready``: only those ready needs, the
        rest at the next run, after ready: agent/pid1/modalias.py).

        Drivers create devices that want drivers (a USB controller's devices, say), so a
        later pass catches those; returns whether new devices appeared since the last pass.
        ``wait=False``: the last pass's modprobe is left running (the boot reads its config
        meanwhile); ``wait()`` finishes it."""
        self.wait()
        before = loaded_modules()
        changed = False
        pending = bool(self.deferred) and not before_ready
        pid: int | None = None
        for n in range(passes):
            aliases = device_aliases()
            if aliases == self.seen_aliases and not pending:
                break
            changed = changed or aliases != self.seen_aliases
            self.seen_aliases = aliases
            pid = self.load(aliases, before_ready, ("button", "evdev"))
            if wait or n < passes - 1:
                reap(pid)
                pid = None
            self.deferred = aliases if before_ready else []
            pending = False
        self.running = (pid, before)
        if wait:
            self.wait()
        return changed

    def wait(self) -> None:
        """The run left running: its modprobe done, and what it loaded recorded."""
        if self.running is None:
            return
        pid, before = self.running
        self.running = None
        reap(pid)
        loaded = sorted(loaded_modules() - before)
        with open(layout.RUN_MODULES_LOADED, "a") as f:
            f.write("".join(m + "\n" for m in loaded))

    def mark_ready(self) -> None:
        """The record's line between the drivers loaded before ready and those after."""
        with open(layout.RUN_MODULES_LOADED, "a") as f:
            f.write("# ready\n")

    def watchdog_drivers(self, found: Callable[[], bool]) -> None:
        """Before ready, where the drivers loaded so far made no watchdog (``found``): an Intel
        chipset's TCO timer is a platform device another driver makes, and the index's header
        (modalias.Watchdogs) says which. Where a driver that makes one is loaded (lpc_ich), the
        watchdog drivers of the platform devices present (iTCO_wdt); where none is found then, the
        late drivers that make one for a device present (i2c_i801, a 100-series or later PCH's
        SMBus function) load now, and the watchdog drivers after them. A board without such a
        driver pays one read of the header."""
        hints = modalias.watchdogs(self.index_path)
        if hints is None:
            return
        self.wait()
        before = loaded_modules()

        def bind() -> None:
            wanted = hints.wanted(hints.devices, device_aliases(buses=("platform",)))
            if wanted:
                reap(start_modprobe(lambda: wanted))
        if hints.early_makers & before:
            bind()
        makers = [] if found() else hints.wanted(hints.late_makers, self.seen_aliases)
        if makers:
            reap(start_modprobe(lambda: makers))
            bind()
        self.running = (None, before)
        self.wait()

    def hotplug(self, events: list[dict[str, str]]) -> list[str]:
        """Devices that appeared since boot (agent/pid1/hotplug.py): their drivers loaded; returns the
        new network interfaces."""
        wanted = hotplug.wanted(events)
        if wanted.aliases:
            reap(self.load(wanted.aliases))
        if any(e.get("LOST") for e in events):  # the socket overflowed: look at every device
            self.run(passes=2)
        if wanted.interfaces:
            log(f"new network interface: {', '.join(wanted.interfaces)}")
        return list(wanted.interfaces)


def power_buttons() -> list[int]:
    """Open event devices of the power buttons present (ACPI's, in a VM too)."""
    fds = []
    for dev in sorted(os.listdir("/sys/class/input")):
        if dev.startswith("event") and read_text(f"/sys/class/input/{dev}/device/name").strip() == "Power Button":
            fds.append(os.open(f"/dev/input/{dev}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    return fds


def power_pressed(fd: int) -> bool:
    try:
        data = os.read(fd, INPUT_EVENT.size * 16)
    except BlockingIOError:
        return False
    for off in range(0, len(data) - INPUT_EVENT.size + 1, INPUT_EVENT.size):
        _, _, etype, code, value = INPUT_EVENT.unpack_from(data, off)
        if etype == EV_KEY and code == KEY_POWER and value == 1:
            log("power button pressed")
            return True
    return False
