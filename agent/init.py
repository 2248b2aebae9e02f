"""``basalt init``: PID 1.

Early mounts, driver coldplug, hostname, supervised services (console shells
or gettys, DHCP), zombie reaping, power button and signals, clean shutdown.
Nothing that goes wrong in here may end PID 1 (the kernel would panic): each
step and each loop turn is guarded, and a failure is logged and survived.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import struct
import sys
import termios
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from agent import kmod, system

RUN = Path("/run/basalt")
MEDIUM_CONFIG = RUN / "medium/basalt/config.yaml"
VERSION_FILE = Path("/usr/lib/basalt/version")
KEY_POWER = 116
EV_KEY = 1
INPUT_EVENT = struct.Struct("llHHi")
IDLE_REPORT_S = 5.0
STOP_GRACE_S = 3.0

# Signals the kernel and tools send PID 1 (busybox/sysvinit conventions).
ACTIONS = {signal.SIGUSR1: "halt", signal.SIGUSR2: "poweroff", signal.SIGPWR: "poweroff",
           signal.SIGTERM: "reboot", signal.SIGINT: "reboot"}


def log(message: str) -> None:
    line = f"basalt: {message}\n"
    for path in ("/dev/console",):
        try:
            with open(path, "w") as f:
                f.write(line)
        except OSError:
            pass
    try:
        with open(RUN / "agent.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
    except OSError:
        pass


@dataclass
class Service:
    name: str
    argv: list[str]
    tty: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    state: str = "stopped"

    def backoff(self) -> float:
        return min(30.0, 0.5 * 2 ** min(self.failures, 6))


def spawn(argv: list[str], tty: str | None = None, env: dict[str, str] | None = None) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # child: new session, optional controlling terminal, then exec
        for sig in ACTIONS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.setsid()
        if tty:
            fd = os.open(tty, os.O_RDWR)
            fcntl.ioctl(fd, termios.TIOCSCTTY, 1)
            for target in (0, 1, 2):
                os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        else:
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
        os.chdir("/")
        os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "vt100",
                                  **(env or {})})
    except BaseException as exc:  # noqa: BLE001 - the child must never return into PID 1's loop
        try:
            os.write(2, f"basalt: cannot start {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    raise AssertionError("unreachable")


def cmdline() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for arg in Path("/proc/cmdline").read_text().split():
            key, _, value = arg.partition("=")
            out.setdefault(key, value) if key != "console" else out.update({key: out.get(key, "") + " " + value})
    except OSError:
        pass
    return out


def consoles(args: dict[str, str]) -> list[str]:
    """Terminal devices for console shells, from console= (tty0 means the first VT)."""
    names = []
    for value in args.get("console", "").split():
        dev = value.split(",")[0]
        dev = "tty1" if dev == "tty0" else dev
        if dev not in names:
            names.append(dev)
    return [f"/dev/{n}" for n in names] or ["/dev/console"]


class Init:
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.by_pid: dict[int, Service] = {}
        self.action: str | None = None
        self.errors: list[str] = []
        self.args = cmdline()
        self.version = VERSION_FILE.read_text().strip() if VERSION_FILE.is_file() else "unknown"
        self.mode = "live"
        self.hostname = "basalt"
        self.power_fds: list[int] = []
        self.ready_ms = 0

    # --- boot ---------------------------------------------------------------
    def guarded(self, what: str, fn: object, *args: object) -> object:
        try:
            return fn(*args)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - PID 1 survives every step
            self.errors.append(f"{what}: {exc}")
            log(f"error: {what}: {exc}")
            return None

    def early_mounts(self) -> None:
        table = [("proc", "/proc", "proc", system.MS_NOSUID | system.MS_NODEV | system.MS_NOEXEC, ""),
                 ("sysfs", "/sys", "sysfs", system.MS_NOSUID | system.MS_NODEV | system.MS_NOEXEC, ""),
                 ("devtmpfs", "/dev", "devtmpfs", system.MS_NOSUID, "mode=0755"),
                 ("devpts", "/dev/pts", "devpts", system.MS_NOSUID | system.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
                 ("tmpfs", "/dev/shm", "tmpfs", system.MS_NOSUID | system.MS_NODEV, "mode=1777"),
                 ("tmpfs", "/run", "tmpfs", system.MS_NOSUID | system.MS_NODEV, "mode=0755"),
                 ("tmpfs", "/tmp", "tmpfs", system.MS_NOSUID | system.MS_NODEV, "mode=1777"),
                 ("cgroup2", "/sys/fs/cgroup", "cgroup2", system.MS_NOSUID | system.MS_NODEV | system.MS_NOEXEC,
                  "nsdelegate")]
        for source, target, fstype, flags, data in table:
            if system.is_mounted(target):
                continue
            os.makedirs(target, exist_ok=True)
            self.guarded(f"mount {target}", system.mount, source, target, fstype, flags, data)
        RUN.mkdir(parents=True, exist_ok=True)
        mode_file = RUN / "mode"
        self.mode = mode_file.read_text().strip() if mode_file.is_file() else "live"
        ptmx = Path("/dev/ptmx")
        if not ptmx.exists():
            ptmx.symlink_to("pts/ptmx")

    def load_config(self) -> dict[str, object]:
        """The baked-in config from the boot medium (the full config agent layers more sources)."""
        if not MEDIUM_CONFIG.is_file():
            return {}
        import yaml  # only when there is a config: keeps the common path fast
        data = yaml.safe_load(MEDIUM_CONFIG.read_text()) or {}
        return data if isinstance(data, dict) else {}

    def set_hostname(self, config: dict[str, object]) -> None:
        name = config.get("hostname")
        if isinstance(name, str) and name:
            self.hostname = name
        system.sethostname(self.hostname)
        Path("/etc/hostname").write_text(self.hostname + "\n")
        hosts = Path("/etc/hosts")
        text = hosts.read_text() if hosts.is_file() else ""
        if f" {self.hostname}\n" not in text:
            hosts.write_text(text + f"127.0.1.1\t{self.hostname}\n")

    def coldplug(self) -> None:
        index = kmod.ModuleIndex()
        loaded: list[str] = []
        for _ in range(2):  # drivers create devices that want drivers (e.g. input -> evdev)
            new, errors = kmod.coldplug(index)
            loaded += new
            for e in errors:
                self.errors.append(f"module {e}")
            if not new:
                break
        for name in ("button", "evdev"):
            try:
                loaded += kmod.load(index, name)
            except (KeyError, OSError):
                pass
        (RUN / "modules-loaded").write_text("\n".join(loaded) + "\n")

    def network(self) -> None:
        self.guarded("loopback", spawn_wait, ["/usr/bin/ip", "link", "set", "lo", "up"])
        for iface in sorted(Path("/sys/class/net").iterdir()):
            if iface.name == "lo" or not (iface / "device").exists():
                continue
            self.add(Service(f"dhcp-{iface.name}", ["/usr/bin/udhcpc", "-f", "-S", "-i", iface.name,
                                                    "-s", "/usr/share/basalt/udhcpc.script", "-t", "10", "-T", "2"]))

    def console_services(self) -> None:
        autologin = self.mode == "live" and self.args.get("basalt.console") != "login"
        for i, tty in enumerate(consoles(self.args)):
            name = f"console-{Path(tty).name}"
            if autologin:
                self.add(Service(name, ["/bin/sh", "-l"], tty=tty, env={"BASALT_CONSOLE": "1"}))
            else:
                self.add(Service(name, ["/usr/bin/getty", "-L", "115200", Path(tty).name, "vt100"]))

    def power_button(self) -> None:
        for dev in sorted(Path("/sys/class/input").glob("event*")):
            try:
                name = (dev / "device" / "name").read_text().strip()
            except OSError:
                continue
            if name == "Power Button":
                self.power_fds.append(os.open(f"/dev/input/{dev.name}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))

    # --- supervision --------------------------------------------------------
    def add(self, svc: Service) -> None:
        self.services[svc.name] = svc
        self.start(svc)

    def start(self, svc: Service) -> None:
        svc.restart_at = None
        try:
            svc.pid = spawn(svc.argv, svc.tty, svc.env)
        except OSError as exc:
            log(f"error: cannot start {svc.name}: {exc}")
            svc.failures += 1
            svc.restart_at = time.monotonic() + svc.backoff()
            return
        svc.started = time.monotonic()
        svc.state = "running"
        self.by_pid[svc.pid] = svc

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            svc = self.by_pid.pop(pid, None)
            if svc is None:
                continue  # an orphan re-parented to us: reaped, nothing more
            svc.pid = None
            ran = time.monotonic() - svc.started
            svc.failures = 0 if ran > 60 else svc.failures + 1
            svc.state = "backoff"
            if self.action is None:
                svc.restart_at = time.monotonic() + (0.2 if svc.tty else svc.backoff())
                code = os.waitstatus_to_exitcode(status)
                if not svc.tty:
                    log(f"service {svc.name} exited ({code}); restarting in {svc.restart_at - time.monotonic():.1f}s")

    def write_status(self) -> None:
        status = {"version": self.version, "mode": self.mode, "hostname": self.hostname,
                  "ready_ms": self.ready_ms, "errors": self.errors,
                  "services": {n: {"state": s.state, "pid": s.pid, "failures": s.failures}
                               for n, s in self.services.items()}}
        tmp = RUN / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(RUN / "status.json")

    def handle_power(self, fd: int) -> None:
        try:
            data = os.read(fd, INPUT_EVENT.size * 16)
        except BlockingIOError:
            return
        for off in range(0, len(data) - INPUT_EVENT.size + 1, INPUT_EVENT.size):
            _, _, etype, code, value = INPUT_EVENT.unpack_from(data, off)
            if etype == EV_KEY and code == KEY_POWER and value == 1:
                log("power button pressed")
                self.action = "poweroff"

    def loop(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        for sig in (*ACTIONS, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ, "signal")
        for fd in self.power_fds:
            sel.register(fd, selectors.EVENT_READ, "power")
        idle_at: float | None = time.monotonic() + IDLE_REPORT_S
        while True:
            try:
                now = time.monotonic()
                deadlines = [s.restart_at for s in self.services.values() if s.restart_at] + \
                            ([idle_at] if idle_at else [])
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                for key, _ in sel.select(timeout):
                    if key.data == "signal":
                        for signum in os.read(rfd, 256):
                            if signum in ACTIONS and self.action is None:
                                self.action = ACTIONS[signal.Signals(signum)]
                    else:
                        self.handle_power(key.fd)
                self.reap()
                if self.action:
                    self.shutdown(self.action)
                now = time.monotonic()
                for svc in self.services.values():
                    if svc.restart_at is not None and svc.restart_at <= now:
                        self.start(svc)
                if idle_at and now >= idle_at:
                    idle_at = None
                    log(f"idle mem_used_kb={system.mem_used_kb()} rss_kb={rss_kb()}")
                self.write_status()
            except Exception:  # noqa: BLE001 - never leave the loop
                log("error in main loop: " + traceback.format_exc().strip().replace("\n", " | "))
                time.sleep(1)

    # --- shutdown -----------------------------------------------------------
    def shutdown(self, action: str) -> None:
        log(f"stopping services ({action})")
        for svc in self.services.values():
            svc.restart_at = None
            if svc.pid:
                try:
                    os.killpg(svc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        try:
            os.kill(-1, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and self.by_pid:
            self.reap()
            time.sleep(0.05)
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reap()
        os.sync()
        for _, target, fstype in reversed(system.mounts()):
            if target not in ("/", "/proc", "/sys", "/dev", "/run") and fstype not in ("proc", "sysfs", "devtmpfs"):
                try:
                    system.umount(target, system.MNT_DETACH)
                except OSError:
                    pass
        os.sync()
        log(f"{action} now")
        cmd = {"poweroff": system.RB_POWER_OFF, "reboot": system.RB_AUTOBOOT, "halt": system.RB_HALT}[action]
        system.reboot(cmd)
        while True:  # reboot(2) does not return; if it fails we must still not exit
            time.sleep(60)

    def boot(self) -> None:
        self.early_mounts()
        self.guarded("ctrl-alt-del", system.reboot, system.RB_DISABLE_CAD)
        config = self.guarded("config", self.load_config) or {}
        self.guarded("hostname", self.set_hostname, config)
        self.guarded("coldplug", self.coldplug)
        self.guarded("network", self.network)
        self.guarded("consoles", self.console_services)
        self.guarded("power button", self.power_button)
        self.ready_ms = system.boot_ms()
        self.guarded("status", self.write_status)
        log(f"ready version={self.version} boot_ms={self.ready_ms} mem_used_kb={system.mem_used_kb()} "
            f"errors={len(self.errors)}")


def spawn_wait(argv: list[str]) -> int:
    pid = spawn(argv)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    if os.getpid() != 1:
        print("basalt init: must run as PID 1", file=sys.stderr)
        return 2
    init = Init()
    try:
        init.boot()
    except BaseException:  # noqa: BLE001
        log("error during boot: " + traceback.format_exc().strip().replace("\n", " | "))
        init.services.setdefault("rescue", Service("rescue", ["/bin/sh", "-l"], tty="/dev/console"))
        init.start(init.services["rescue"])
    while True:
        try:
            init.loop()
        except BaseException:  # noqa: BLE001 - even KeyboardInterrupt/SystemExit must not end PID 1
            log("error: " + traceback.format_exc().strip().replace("\n", " | "))
            time.sleep(1)
