"""``basalt init``: PID 1 — the boot sequence and the main loop, from the parts:

- ``supervise``: services, restarts with backoff, logs, reaping;
- ``devices``: the kernel command line, coldplug and hotplug, consoles, the power button;
- ``provision``: the config in force and the config modules, phase by phase;
- ``control``: ``basalt config apply|confirm`` requests and config trials;
- ``containers``: what containerd and k3s need from the OS;
- ``status``: ``/run/basalt/status.json``;  ``power``: signals and the clean shutdown;
- ``watchdog``: the hardware watchdog, fed while the kernel and this loop are alive.

Nothing that goes wrong in here may end PID 1 (the kernel would panic): each step and each
loop turn is guarded, and a failure is logged and survived.

Start-up speed matters (every import costs ~40x under emulation and on small boards), so the
boot path imports only C modules: ``_signal`` rather than ``signal`` (which pulls in ``enum``),
``select.poll`` rather than ``selectors``, ``os.path`` rather than ``pathlib``; json, ctypes and
traceback are imported only when needed.
"""

from __future__ import annotations

import _signal
import os
import select
import sys
import time

from agent import layout, system
from agent.config import bootargs
from agent.files import read_text
from agent.log import Errors, format_exception, log
from agent.pid1 import containers, control, devices, hotplug, power, status, watchdog
from agent.pid1.provision import Provisioner
from agent.pid1.supervise import Service, Supervisor, rotate_logs, spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# What the boot imports inside functions on its way to ready (a config's sources, the stamped site,
# the config modules, first-boot growth), besides what this module imports when it loads: the
# build's read-ahead list names their files too (builder/media/readahead.py reads this tuple from
# the image's own copy of this file). A boot with basalt.debug logs what it imported by ready, and
# the boot test checks that the list has each one's file.
BOOT_IMPORTS = ("agent.config.site", "agent.config.datasources", "agent.config.sources", "agent.config.section",
                "agent.config.content", "agent.http", "agent.modules.plans", "agent.modules.actions",
                "agent.disk.growstate", "json", "base64", "_crypt")
RUNTIME_WAIT_S = 120.0  # the runtime phase runs after this even without a network
RUNTIME_POLL_S = 0.5
IDLE_REPORT_S = 5.0
ROTATE_CHECK_S = 30.0


class Timer:
    """One thing the loop does at a time: ``due()`` is when (None: not now), ``fire(now)`` does it
    and says whether the status changed."""

    __slots__ = ("due", "fire", "name")

    def __init__(self, name: str, due: Callable[[], float | None], fire: Callable[[float], object]):
        self.name, self.due, self.fire = name, due, fire


def python_started() -> dict[str, int]:
    """When the launcher (/usr/sbin/basalt, its STARTED) ran its first line: the interpreter's own
    start, before the agent's imports."""
    started = getattr(sys.modules.get("__main__"), "STARTED", None)
    return {"python_start_ms": int(started * 1000)} if isinstance(started, float) else {}


class Init:
    def __init__(self) -> None:
        self.errors = Errors()
        self.phases: dict[str, int] = {**python_started(), "agent_start_ms": system.boot_ms()}
        self.supervisor = Supervisor()
        self.args = bootargs.parse(read_text("/proc/cmdline"))
        self.version = read_text(layout.LIB_VERSION, "unknown").strip()
        self.prov = Provisioner(self.supervisor, self.errors, self.phases, self.version)
        self.prov.debug = "basalt.debug" in self.args
        self.coldplug = devices.Coldplug()
        self.action: str | None = None
        self.watchdog: watchdog.Watchdog | None = None
        self.watchdog_seen: str | None = None  # the identity arm_watchdog last decided on ("": none)
        self.power_fds: list[int] = []
        self.ready_ms = 0
        self.runtime_pending = False
        self.grow_device: str | None = None  # the state partition, when it is to grow after ready
        self.grow_pid: int | None = None
        self.runtime_deadline = 0.0
        self.runtime_poll_at = 0.0
        self.idle_at: float | None = None
        self.rotate_at = 0.0
        self.timers = [
            Timer("service restarts", self.supervisor.next_restart, self.supervisor.restart_due),
            Timer("runtime phase", lambda: self.runtime_poll_at if self.runtime_pending else None, self.runtime_check),
            Timer("config trial", lambda: control.deadline(self.prov), self.trial_check),
            Timer("log rotation", lambda: self.rotate_at, self.rotate),
            Timer("idle report", lambda: self.idle_at, self.idle_report),
        ]

    # --- boot ---------------------------------------------------------------
    def phase(self, name: str, fn: Callable[..., object], *args: object) -> object:
        result = self.errors.guard(name, fn, *args)
        self.phases[f"{name}_done_ms"] = system.boot_ms()
        return result

    def boot(self) -> None:
        self.early_mounts()
        self.errors.guard("ctrl-alt-del", system.disable_ctrl_alt_del)
        # The drivers ready needs load while the state and the config are read (a second CPU,
        # or the kernel's own waits); the watchdog and the network wait for them below.
        self.phase("coldplug_start", self.coldplug.run, 1, True, False)
        self.phase("state", self.grow_state)
        from agent.config import site
        self.prov.site_index = self.errors.guard("site", site.load)  # type: ignore[assignment]
        early = site.needs_identity(self.prov.site_index)
        if early:  # per-device configs are chosen by MAC address: the network drivers first
            self.phase("coldplug", self.coldplug.wait)
        self.prov.config = self.phase("config", self.prov.load) or {}  # type: ignore[assignment]
        self.phase("hostname", self.prov.set_hostname, self.prov.config)
        self.phase("initrd_modules", self.prov.run_phase, "initrd")
        if not early:
            self.phase("coldplug", self.coldplug.wait)
        self.phase("watchdog", self.arm_watchdog, True)
        self.phase("containers", containers.prepare, self.supervisor, self.errors)
        self.phase("network", self.prov.network)
        self.phase("boot_modules", self.prov.run_phase, "boot")
        self.runtime_pending = bool(self.prov.config) or os.path.exists(layout.K3S_BINARY) \
            or bootargs.datasource_url(read_text("/proc/cmdline")) is not None
        merged = self.prov.merged
        if merged is not None and not merged.problems:  # type: ignore[attr-defined]
            from agent.config import sources
            self.errors.guard("known-good config", sources.save_known_good, merged)
        self.errors.guard("ssh host key", report_host_key)
        self.phase("consoles", self.consoles)
        self.phase("power_button", self.power_button)
        self.errors.guard("modules record", self.coldplug.mark_ready)
        self.ready_ms = system.boot_ms()
        if "basalt.debug" in self.args:
            log("phases " + " ".join(f"{k}={v}" for k, v in self.phases.items()))
            log_modules("ready")  # what the boot imported: the read-ahead list should name their files

    def early_mounts(self) -> None:
        """What the initramfs did not already mount (it normally mounts all of these)."""
        for source, target, fstype, flags, data in system.EARLY_MOUNTS:
            if not system.is_mounted(target):
                os.makedirs(target, exist_ok=True)
                self.errors.guard(f"mount {target}", system.mount, source, target, fstype, flags, data)
        if read_text(layout.RUN_STATE_DEVICE).strip() and not os.path.lexists(layout.RUN_LOG):
            # With a state partition, service logs are kept across reboots (same path, rotated).
            self.errors.guard("persistent logs", os.makedirs, layout.PERSISTENT_LOG, 0o750, True)
            self.errors.guard("persistent logs", os.symlink, layout.PERSISTENT_LOG, layout.RUN_LOG)
        os.makedirs(layout.RUN_LOG, exist_ok=True)
        self.prov.mode = read_text(layout.RUN_MODE, "live").strip() or "live"

    def grow_state(self) -> None:
        """On an installed disk, whether the state partition should take the rest of the disk (the
        first boot of a flashed image): sysfs reads only. The growth itself runs after the ready
        line (start_growth): nothing before ready needs the room."""
        device = read_text(layout.RUN_STATE_DEVICE).strip()
        if device and self.prov.mode == "installed":
            from agent.disk import growstate
            self.grow_device = device if growstate.needed(device) else None

    def start_growth(self) -> None:
        """Grow the state partition in a child forked from PID 1: the partition tables' code and
        what it imports (ctypes, dataclasses, hashlib: ~7 MiB) go with the child instead of staying
        in PID 1 for good. The runtime phase (k3s) waits for it (runtime_check)."""
        device = self.grow_device
        if device is None:
            return

        def grow() -> None:
            from agent.disk import growstate
            said = growstate.grow(device, layout.RUN_STATE)
            if said:
                log(said)
        self.grow_pid = spawn(grow, log_path=layout.RUN_LOG + "/grow-state.log")
        self.supervisor.watch(self.grow_pid, self.growth_done)

    def growth_done(self, code: int) -> None:
        self.grow_pid = None
        if code != 0:
            self.errors.add("state", f"growing the state partition failed (exit {code}; see "
                                     f"{layout.RUN_LOG}/grow-state.log)")
            log(f"error: growing the state partition failed (exit {code}); it keeps its size")

    def arm_watchdog(self, before_ready: bool = False) -> None:
        """After the coldplug (it loads the driver); on a trial boot the main loop must keep turning
        until the health gate's verdict can be acted on (agent/pid1/watchdog.py). Where the boot's
        coldplug made none, the drivers of a watchdog whose device another driver makes come first
        (an Intel chipset's TCO timer, iTCO_wdt, behind lpc_ich or the SMBus driver: the coldplug's
        watchdog_drivers). Again after the late coldplug and each hotplug, while none is armed.
        Each device is decided on once."""
        name = watchdog.identity()
        if self.watchdog is not None or name == self.watchdog_seen:
            return
        from agent.config.section import health_timeout, section
        setting = section(self.prov.config).get("watchdog")
        if before_ready and not name and setting is not False:
            self.coldplug.watchdog_drivers(lambda: bool(watchdog.identity()))
            name = watchdog.identity()
        self.watchdog_seen = name
        if not watchdog.wanted(setting, name):
            if name:
                log(f"watchdog ({name}) left unarmed (basalt.watchdog: true arms it; docs/upgrades.md)")
            return
        limit = health_timeout(self.prov.config) + watchdog.GRACE_S if "basalt.trial" in self.args else None
        self.watchdog = dog = watchdog.start(limit, name=name)
        if dog is not None:
            second = f", resets within {dog.reset_s}s of the last feed (second expiry)" \
                if dog.reset_s != dog.timeout_s else ""
            trial = f", trial boot: the main loop must turn within {limit:.0f}s" if limit else ""
            log(f"watchdog ({name or watchdog.DEVICE}) armed: {dog.timeout_s}s{second}{trial}")

    def consoles(self) -> None:
        for svc in devices.console_services(self.args, self.prov.mode):
            self.supervisor.add(svc)

    def power_button(self) -> None:
        self.power_fds += devices.power_buttons()

    def late_coldplug(self) -> None:
        """After the ready line: drivers for devices the first drivers created, and DHCP on any
        interface they brought (a USB NIC behind a USB controller)."""
        if self.coldplug.run(passes=2):
            self.prov.network()
        self.errors.guard("watchdog", self.arm_watchdog)
        self.phases["late_coldplug_done_ms"] = system.boot_ms()

    def hotplug(self, events: list[dict[str, str]]) -> None:
        if self.coldplug.hotplug(events):
            self.prov.network()
        self.errors.guard("watchdog", self.arm_watchdog)

    def unattended_install(self) -> None:
        """A live boot whose config says to install (install.device and install.silent, or
        basalt.mode=install): ``basalt install`` runs by itself, its messages on the console."""
        if self.prov.mode != "live":
            return
        from agent.config.section import install_wanted_at_boot
        if install_wanted_at_boot(self.prov.config, read_text("/proc/cmdline")):
            log("unattended install: starting basalt install")
            pid = spawn([layout.AGENT, "install", "--unattended"], log_path="/dev/console")
            self.supervisor.watch(pid, self.install_done)

    def health(self) -> None:
        """An installed node's boot selection settled after each boot (agent/upgrade/health.py): a trial
        boot's health gate, or the record of a trial that did not come back."""
        if self.prov.mode == "installed" and read_text(layout.RUN_SLOT).strip() in layout.SLOTS:
            pid = spawn([layout.AGENT, "health"], log_path=layout.RUN_LOG + "/health.log")
            self.supervisor.watch(pid, self.health_done)

    def health_done(self, code: int) -> None:
        if code not in (0, 1):
            self.errors.add("health", f"basalt health exited {code} (see {layout.RUN_LOG}/health.log)")

    def install_done(self, code: int) -> None:
        if code != 0 and self.action is None:  # not the installer's own power off stopping it
            self.errors.append(f"install: basalt install exited {code} (its messages are on the console)")
            log(f"error: unattended install failed (exit {code}); the live system keeps running")

    # --- timers -------------------------------------------------------------
    def runtime_check(self, now: float) -> bool:
        network_up = os.path.exists(layout.RUN_NETWORK_UP)
        if self.grow_pid is not None or not (network_up or now >= self.runtime_deadline):
            self.runtime_poll_at = now + RUNTIME_POLL_S  # the DHCP hook touches a file: look again soon
            return False
        self.runtime_pending = False
        if not network_up:
            log(f"network not up after {RUNTIME_WAIT_S:.0f}s: running the runtime phase anyway")
        self.errors.guard("runtime modules", self.prov.runtime)
        return True

    def trial_check(self, now: float) -> bool:
        deadline = control.deadline(self.prov)
        if deadline is None or now < deadline:
            return False
        self.errors.guard("revert", control.revert, self.prov)
        return True

    def rotate(self, now: float) -> bool:
        self.rotate_at = now + ROTATE_CHECK_S
        self.errors.guard("log rotation", rotate_logs)
        return False

    def idle_report(self, now: float) -> bool:
        self.idle_at = None
        log(f"idle mem_used_kb={system.mem_used_kb()} rss_kb={status.rss_kb()}")
        if "basalt.debug" in self.args:  # what holds PID 1's memory: the modules it has imported
            log_modules("idle")
        return False

    # --- the loop -----------------------------------------------------------
    def write_status(self) -> None:
        prov = self.prov
        deadline = control.deadline(prov)
        status.write({"version": self.version, "mode": prov.mode, "hostname": prov.hostname,
                      "ready_ms": self.ready_ms, "phases": self.phases, "errors": self.errors,
                      "timeline": status.timeline(read_text(layout.RUN_TIMELINE), self.phases, self.ready_ms),
                      "config_sources": prov.config_sources, "site": prov.site_match,
                      "config_fallback": prov.config_fallback,
                      "trial_deadline_s": round(deadline - time.monotonic()) if deadline is not None else None,
                      "services": self.supervisor.status()})

    def signalled(self, rfd: int) -> None:
        for signum in os.read(rfd, 256):
            if signum in power.ACTIONS and self.action is None:
                self.action = power.ACTIONS[signum]
                self.supervisor.stopping = True
            elif signum == _signal.SIGHUP:
                self.errors.guard("config request", control.handle_request, self.prov)

    def loop(self, rfd: int) -> None:
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        for fd in self.power_fds:
            poller.register(fd, select.POLLIN)
        self.errors.guard("status", self.write_status)  # at ready, before anything slower
        self.errors.guard("late coldplug", self.late_coldplug)
        uevents = hotplug.open_socket()
        if uevents is not None:
            poller.register(uevents.fileno(), select.POLLIN)
        now = time.monotonic()
        self.idle_at, self.rotate_at, self.runtime_deadline = now + IDLE_REPORT_S, now + ROTATE_CHECK_S, \
            now + RUNTIME_WAIT_S
        dirty = True
        while True:
            try:
                now = time.monotonic()
                due = [d for t in self.timers if (d := t.due()) is not None]
                timeout = max(0, int((min(due) - now) * 1000) + 1) if due else None
                for fd, _ in poller.poll(timeout):
                    dirty = True
                    if fd == rfd:
                        self.signalled(rfd)
                    elif uevents is not None and fd == uevents.fileno():
                        self.errors.guard("hotplug", lambda: self.hotplug(hotplug.drain(uevents)))
                    elif devices.power_pressed(fd) and self.action is None:
                        self.action = "poweroff"
                        self.supervisor.stopping = True
                self.supervisor.reap()
                if self.watchdog is not None:
                    self.watchdog.beat()
                if self.action:
                    if self.watchdog is not None:
                        self.watchdog.shutting_down()
                    power.shutdown(self.action, self.supervisor)
                now = time.monotonic()
                for timer in self.timers:
                    when = timer.due()
                    if when is not None and when <= now and timer.fire(now):
                        dirty = True
                if dirty:
                    self.write_status()
                    dirty = False
            except Exception:  # noqa: BLE001 - never leave the loop
                log("error in main loop: " + format_exception())
                time.sleep(1)


def log_modules(when: str) -> None:
    """The modules PID 1 has imported (basalt.debug): all, and the native ones apart."""
    loaded = sorted(sys.modules)
    native = [n for n in loaded if str(getattr(sys.modules[n], "__file__", "")).endswith(".so")]
    log(f"modules at {when}: {len(loaded)}; native: {' '.join(native)}; all: {' '.join(loaded)}")


def report_host_key() -> None:
    """The SSH host key's fingerprint on the console, to check a first login against."""
    if os.path.exists(layout.SSH_HOST_KEY):  # the config modules imported only when there is one
        from agent.modules import plans
        log(f"ssh host key: ED25519 {plans.host_key_fingerprint()}")


def main() -> int:
    if os.getpid() != 1:
        print("basalt init: must run as PID 1", file=sys.stderr)
        return 2
    init = Init()
    rfd = power.install_signals()
    try:
        init.boot()
    except BaseException:  # noqa: BLE001
        log("error during boot: " + format_exception())
        init.supervisor.add(Service("rescue", ["/bin/sh", "-l"], tty="/dev/console"))
    log(f"ready version={init.version} boot_ms={init.ready_ms or system.boot_ms()} "
        f"mem_used_kb={system.mem_used_kb()} errors={len(init.errors)}")
    init.errors.guard("state", init.start_growth)
    init.errors.guard("unattended install", init.unattended_install)
    init.errors.guard("health", init.health)
    while True:
        try:
            init.loop(rfd)
        except BaseException:  # noqa: BLE001 - even KeyboardInterrupt/SystemExit must not end PID 1
            log("error: " + format_exception())
            time.sleep(1)
