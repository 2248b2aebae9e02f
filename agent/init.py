"""``basalt init``: PID 1.

Early mounts, driver coldplug, hostname, supervised services (console shells
or gettys, DHCP), zombie reaping, power button and signals, clean shutdown.
Nothing that goes wrong in here may end PID 1 (the kernel would panic): each
step and each loop turn is guarded, and a failure is logged and survived.

Start-up speed matters (every import costs ~40x under emulation and on small
boards), so the boot path imports only C modules: ``_signal`` rather than
``signal`` (which pulls in ``enum``), ``select.poll`` rather than
``selectors``, ``os.path`` rather than ``pathlib``; json, ctypes and traceback
are imported only when needed.
"""

from __future__ import annotations

import _signal
import fcntl
import os
import select
import struct
import sys
import termios
import time

from agent import hotplug, layout, system

RUN = layout.RUN
VERSION_FILE = layout.LIB_VERSION
LOG_DIR = layout.RUN_LOG
PERSISTENT_LOG_DIR = layout.PERSISTENT_LOG  # LOG_DIR links here when /var is the state partition
NETWORK_UP = layout.RUN_NETWORK_UP  # touched by the DHCP hook on a lease
RUNTIME_WAIT_S = 120.0
REQUEST = layout.RUN_REQUEST  # from "basalt config apply|confirm", with SIGHUP
RESULT = layout.RUN_RESULT
BUSYBOX = "/usr/bin/busybox"
KEY_POWER = 116
EV_KEY = 1
INPUT_EVENT = struct.Struct("llHHi")
IDLE_REPORT_S = 5.0
LOG_MAX = 1 << 20  # a service log is rotated past this size (logs live in RAM, under /run)
LOG_KEEP = 2  # rotated generations kept: name.log.1, name.log.2
ROTATE_CHECK_S = 30.0
IMAGE_SERVICES = layout.LIB_SERVICES  # {"argv": [...], "env": {...}} per file, from the image
K3S_BINARY = "/usr/bin/k3s"
K3S_SHARE = layout.LIB_K3S
CONTAINER_DATA = ("/var/lib/containerd", "/var/lib/rancher")  # overlayfs snapshots live under these
CGROUP_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")
STOP_GRACE_S = 3.0

# Signals the kernel and tools send PID 1 (busybox/sysvinit conventions).
ACTIONS = {_signal.SIGUSR1: "halt", _signal.SIGUSR2: "poweroff", _signal.SIGPWR: "poweroff",
           _signal.SIGTERM: "reboot", _signal.SIGINT: "reboot"}
HANDLED = (*ACTIONS, _signal.SIGCHLD, _signal.SIGHUP)


def log(message: str) -> None:
    line = f"basalt: {message}\n"
    try:
        with open("/dev/console", "w") as f:
            f.write(line)
    except OSError:
        pass
    try:
        with open(layout.RUN_AGENT_LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
    except OSError:
        pass


def format_exception() -> str:
    import traceback
    return traceback.format_exc().strip().replace("\n", " | ")


class Service:
    __slots__ = ("argv", "env", "failures", "name", "pid", "restart_at", "started", "state", "tty")

    def __init__(self, name: str, argv: list[str], tty: str | None = None, env: dict[str, str] | None = None):
        self.name, self.argv, self.tty, self.env = name, argv, tty, env or {}
        self.pid: int | None = None
        self.started = 0.0
        self.failures = 0
        self.restart_at: float | None = None
        self.state = "stopped"

    def backoff(self) -> float:
        return min(30.0, 0.5 * 2 ** min(self.failures, 6))


class Trial:
    """A config applied with ``--try``: what to put back if it is not confirmed in time."""

    __slots__ = ("config", "deadline", "merged", "seconds", "sources")

    def __init__(self, config: dict[str, object], merged: object, sources: list[str], seconds: float):
        self.config, self.merged, self.sources, self.seconds = config, merged, sources, seconds
        self.deadline = time.monotonic() + seconds


class Supervisor:
    """modules.Services for PID 1: config modules start and stop supervised services."""

    def __init__(self, init: Init):
        self.init = init

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.init.ensure(name, argv, env)

    def stop(self, name: str) -> None:
        self.init.remove(name)


def spawn(argv: list[str], tty: str | None = None, env: dict[str, str] | None = None,
          log_path: str | None = None) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # child: default signals, new session, optional controlling terminal, exec
        for sig in HANDLED:
            _signal.signal(sig, _signal.SIG_DFL)
        _signal.set_wakeup_fd(-1)
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
            if env and env.get("BASALT_QUIET"):
                os.dup2(null, 1)
                os.dup2(null, 2)
            elif log_path:  # a service's output goes to its log, not over the console
                out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                os.dup2(out, 1)
                os.dup2(out, 2)
        os.chdir("/")
        os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "vt100",
                                  **(env or {})})
    except BaseException as exc:  # noqa: BLE001 - the child must never return into PID 1's loop
        try:
            os.write(2, f"basalt: cannot start {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    raise AssertionError("unreachable")


def spawn_wait(argv: list[str], quiet: bool = False, log_path: str | None = None) -> int:
    pid = spawn(argv, env={"BASALT_QUIET": "1"} if quiet else None, log_path=log_path)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def rotate_logs(directory: str = LOG_DIR, limit: int = LOG_MAX, keep: int = LOG_KEEP) -> list[str]:
    """Rotate each service log past ``limit``: copy to .1 (older ones shift up), then
    truncate in place, so a service writing with O_APPEND carries on into the fresh file."""
    rotated = []
    for name in listdir(directory):
        path = f"{directory}/{name}"
        if not name.endswith(".log") or os.path.getsize(path) <= limit:
            continue
        for n in range(keep - 1, 0, -1):
            if os.path.exists(f"{path}.{n}"):
                os.replace(f"{path}.{n}", f"{path}.{n + 1}")
        with open(path, "rb") as src, open(f"{path}.1", "wb") as dst:
            while chunk := src.read(1 << 16):
                dst.write(chunk)
        os.truncate(path, 0)
        rotated.append(name)
    return rotated


def parse_cmdline(text: str) -> dict[str, str]:
    """Kernel arguments; ``console=`` may repeat, so its values are joined with spaces."""
    out: dict[str, str] = {}
    for arg in text.split():
        key, _, value = arg.partition("=")
        if key == "console":
            out[key] = (out.get(key, "") + " " + value).strip()
        else:
            out.setdefault(key, value)
    return out


def consoles(args: dict[str, str]) -> list[str]:
    """Terminal devices for console shells, from console= (tty0 means the first VT)."""
    names: list[str] = []
    for value in args.get("console", "").split():
        dev = value.split(",")[0]
        dev = "tty1" if dev == "tty0" else dev
        if dev not in names:
            names.append(dev)
    return [f"/dev/{n}" for n in names] or ["/dev/console"]


def read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def device_aliases(sys_root: str = "/sys") -> list[str]:
    """The modalias of every device present now."""
    out = set()
    bus_root = sys_root + "/bus"
    for bus in sorted(os.listdir(bus_root)) if os.path.isdir(bus_root) else []:
        devices = f"{bus_root}/{bus}/devices"
        for dev in sorted(os.listdir(devices)) if os.path.isdir(devices) else []:
            value = read(f"{devices}/{dev}/modalias").strip()
            if value:
                out.add(value)
    return sorted(out)


class Init:
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.by_pid: dict[int, Service] = {}
        self.action: str | None = None
        self.errors: list[str] = []
        self.args = parse_cmdline(read("/proc/cmdline"))
        self.version = read(VERSION_FILE, "unknown").strip()
        self.mode = "live"
        self.hostname = "basalt"
        self.power_fds: list[int] = []
        self.ready_ms = 0
        self.config_sources: list[str] = []
        self.config: dict[str, object] = {}
        self.merged: object = None  # sources.Merged of the config in force
        self.config_fallback: str | None = None
        self.base_tables: dict[str, str] = {}  # the image's passwd/group, before users: added to them
        self.trying: Trial | None = None  # an unconfirmed "config apply --try"
        self.runtime_pending = False
        self.runtime_done = False
        self.seen_aliases: list[str] = []
        self.phases: dict[str, int] = {"agent_start_ms": system.boot_ms()}
        self.installer: int | None = None  # the pid of an unattended "basalt install"

    # --- boot ---------------------------------------------------------------
    def guarded(self, what: str, fn: object, *args: object) -> object:
        try:
            return fn(*args)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - PID 1 survives every step
            self.errors.append(f"{what}: {exc}")
            log(f"error: {what}: {exc}")
            return None

    def phase(self, name: str, fn: object, *args: object) -> object:
        result = self.guarded(name, fn, *args)
        self.phases[f"{name}_done_ms"] = system.boot_ms()
        return result

    def early_mounts(self) -> None:
        """What the initramfs did not already mount (it normally mounts all of these)."""
        for source, target, fstype, flags, data in system.EARLY_MOUNTS:
            if not system.is_mounted(target):
                os.makedirs(target, exist_ok=True)
                self.guarded(f"mount {target}", system.mount, source, target, fstype, flags, data)
        if read(layout.RUN_STATE_DEVICE).strip() and not os.path.lexists(LOG_DIR):
            # With a state partition, service logs are kept across reboots (same path, rotated).
            self.guarded("persistent logs", os.makedirs, PERSISTENT_LOG_DIR, 0o750, True)
            self.guarded("persistent logs", os.symlink, PERSISTENT_LOG_DIR, LOG_DIR)
        os.makedirs(LOG_DIR, exist_ok=True)
        self.mode = read(layout.RUN_MODE, "live").strip() or "live"

    def load_config(self) -> dict[str, object]:
        """Merge the config sources (see sources.py). A source that fails validation is not
        applied: the last known-good config is, and the problems are logged and kept in the status."""
        from agent import bootargs
        text = read("/proc/cmdline")
        seed = self.guarded("nocloud seed", self.collect_seed)
        if not seed and not bootargs.has_config(text):
            return {}  # nothing to load: skip the parser and validator imports
        from agent import sources
        merged = sources.gather(text)
        for problem in merged.problems:
            message = problem.render().replace("\n", " - ")
            self.errors.append(f"config: {message}")
            log(f"error: config: {message}")
        if merged.fallback:
            log(f"error: config: using the last known-good config ({merged.fallback})")
        self.merged = merged
        self.config_sources = merged.sources
        self.config_fallback = merged.fallback
        return merged.value

    def collect_seed(self) -> str | None:
        from agent import datasources
        found = datasources.find_seed()
        if found is None:
            return None
        datasources.collect_seed(*found)
        log(f"nocloud seed found on {found[0]}")
        return found[0]

    def facts(self) -> dict[str, object]:
        """What plans need to know about the running system."""
        if not self.base_tables:
            self.base_tables = {name: read(f"/etc/{name}") for name in ("passwd", "group")}
        net = "/sys/class/net"
        ifaces = sorted(os.listdir(net)) if os.path.isdir(net) else []
        wired = [i for i in ifaces if os.path.exists(f"{net}/{i}/device") and not os.path.exists(f"{net}/{i}/wireless")]
        k3s = os.path.exists(K3S_BINARY)
        return {"hostname": self.hostname, **self.base_tables, "interfaces": wired,
                "wireless": [i for i in ifaces if os.path.exists(f"{net}/{i}/wireless")],
                "have_wpa_supplicant": os.path.exists("/usr/sbin/wpa_supplicant"),
                "version": self.version, "mode": self.mode, "slot": read(layout.RUN_SLOT, self.mode).strip(),
                "k3s": k3s, "k3s_images": listdir(K3S_SHARE + "/images") if k3s else [],
                "k3s_charts": listdir(K3S_SHARE + "/charts") if k3s else []}

    def run_phase(self, phase: str, skip: tuple[str, ...] = ()) -> list[str]:
        """Apply the config modules of ``phase``; each module's failure is recorded, the rest run."""
        if not self.config and not getattr(self.merged, "scripts", None) and not os.path.exists(K3S_BINARY):
            return []
        from agent import modules
        errors = []
        for name, actions in modules.plan_phase(phase, self.config, self.facts()):
            if name in skip:
                continue
            for error in modules.apply(actions, self.run_command, services=Supervisor(self)):
                errors.append(f"{phase}/{name}: {error}")
                log(f"error: {phase}/{name}: {error}")
        if phase == "runtime" and "scripts" not in skip:
            for script in getattr(self.merged, "scripts", []):
                code = self.run_command([script])
                if code != 0:
                    errors.append(f"runtime/user-data: {script} exited {code}")
                    log(f"error: runtime/user-data: {script} exited {code}")
        self.errors += errors
        self.phases[f"{phase}_modules_done_ms"] = system.boot_ms()
        return errors

    @staticmethod
    def run_command(argv: list[str]) -> int:
        return spawn_wait(argv, log_path=f"{LOG_DIR}/config-commands.log")

    def runtime(self) -> None:
        """Once the network is up: the HTTP datasource (a new or changed copy is applied now;
        its init_cmd and boot_cmd run from the next boot), then the runtime modules, run_cmd
        and user-data scripts."""
        from agent import bootargs
        url = bootargs.datasource_url(read("/proc/cmdline"))
        if url:
            from agent import datasources
            if self.guarded("datasource", datasources.fetch_url, url):
                log(f"datasource {url}: new user-data, applying")
                self.reconfigure()
        self.run_phase("runtime")
        self.runtime_done = True

    def reconfigure(self) -> list[str]:
        """Re-read every source and apply the result to the running node (``basalt config
        apply``, a changed datasource). Commands and scripts run once per boot, so not here."""
        from agent import modules
        before = len(self.errors)
        config = self.load_config()
        if self.config_fallback and self.config:
            return self.errors[before:]  # invalid: keep what is in force
        self.config = config
        skip = (*modules.ONCE_PER_BOOT, "scripts")
        self.guarded("hostname", self.set_hostname, self.config)
        for phase in ("initrd", "boot"):
            self.run_phase(phase, skip)
        self.network()
        if self.runtime_done:
            self.run_phase("runtime", skip)
        return self.errors[before:]

    def grow_state(self) -> None:
        """On an installed disk, the state partition takes the rest of the disk (first boot)."""
        device = read(layout.RUN_STATE_DEVICE).strip()
        if device and self.mode == "installed":
            from agent import growstate
            said = growstate.grow(device, layout.RUN_STATE)
            if said:
                log(said)

    def set_hostname(self, config: dict[str, object]) -> None:
        name = config.get("hostname")
        if isinstance(name, str) and name:
            self.hostname = name
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write(self.hostname)
        with open("/etc/hostname", "w") as f:
            f.write(self.hostname + "\n")
        with open("/etc/hosts", "w") as f:
            f.write(system.hosts_text(self.hostname))

    def coldplug(self, passes: int = 1) -> bool:
        """Load a driver for every device present (udev's job, done with busybox modprobe).

        Drivers create devices that want drivers (a USB controller's devices, say), so a
        later pass catches those; returns whether new devices appeared since the last pass."""
        before = set(read("/proc/modules").split("\n"))
        changed = False
        for _ in range(passes):
            aliases = device_aliases()
            if aliases == self.seen_aliases:
                break
            changed = True
            self.seen_aliases = aliases
            # Drivers that find no device of theirs (e.g. cpufreq in a VM) refuse to load: not an error.
            spawn_wait([BUSYBOX, "modprobe", "-a", "-q", *aliases, "button", "evdev"], quiet=True)
        loaded = sorted(line.split()[0] for line in set(read("/proc/modules").split("\n")) - before if line)
        with open(layout.RUN_MODULES_LOADED, "a") as f:
            f.write("".join(m + "\n" for m in loaded))
        return changed

    def late_coldplug(self) -> None:
        """After the ready line: drivers for devices the first drivers created, and DHCP on any
        interface they brought (a USB NIC behind a USB controller)."""
        if self.coldplug(passes=2):
            self.network()
        self.phases["late_coldplug_done_ms"] = system.boot_ms()

    def hotplug(self, events: list[dict[str, str]]) -> None:
        """Devices that appeared since boot (agent/hotplug.py): their drivers, and DHCP (or the
        configured network) on a new interface."""
        wanted = hotplug.wanted(events)
        if wanted.aliases:
            spawn_wait([BUSYBOX, "modprobe", "-a", "-q", *wanted.aliases], quiet=True)
        if any(e.get("LOST") for e in events):  # the socket overflowed: look at every device
            self.coldplug(passes=2)
        if wanted.interfaces:
            log(f"new network interface: {', '.join(wanted.interfaces)}")
            self.network()

    def containers(self) -> None:
        """What containers and k3s need from the OS: cgroup v2 controllers delegated to child
        groups, and, on images that run containers, the image's modules and sysctls loaded,
        / shared for mount propagation, and the image's own services started."""
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            available = f.read().split()
        wanted = " ".join(f"+{c}" for c in CGROUP_CONTROLLERS if c in available)
        if wanted:
            with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
                f.write(wanted)
        services = sorted(n for n in listdir(IMAGE_SERVICES) if n.endswith(".json"))
        if not services and not os.path.exists(K3S_BINARY):
            return
        def failed(what: str) -> None:
            self.errors.append(f"containers: {what}")
            log(f"error: containers: {what}")

        names = [name for conf in listdir("/usr/lib/modules-load.d")
                 for line in read(f"/usr/lib/modules-load.d/{conf}").splitlines()
                 if (name := line.split("#")[0].strip())]
        if names and spawn_wait([BUSYBOX, "modprobe", "-a", *names], quiet=True) != 0:
            failed(f"modprobe -a {' '.join(names)} failed (basalt doctor names the missing ones)")
        for conf in sorted(listdir("/usr/lib/sysctl.d")):
            for line in read(f"/usr/lib/sysctl.d/{conf}").splitlines():
                key, sep, value = line.split("#")[0].partition("=")
                if sep:
                    self.guarded(f"sysctl {key.strip()}", write_file,
                                 "/proc/sys/" + key.strip().replace(".", "/"), value.strip())
        if spawn_wait([BUSYBOX, "mount", "--make-rshared", "/"], quiet=True) != 0:
            failed("mount --make-rshared / failed")
        var = [fstype for _, target, fstype in system.mounts() if target == "/var"]
        if var and var[-1] == "overlay":  # live mode: an overlay cannot be the upper layer of another
            for d in CONTAINER_DATA:
                os.makedirs(d, 0o700, exist_ok=True)
                if spawn_wait([BUSYBOX, "mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", d], quiet=True) != 0:
                    failed(f"cannot mount a tmpfs on {d}")
        import json
        for name in services:
            spec = json.loads(read(f"{IMAGE_SERVICES}/{name}"))
            self.ensure(name[:-5], spec["argv"], spec.get("env"))

    def network(self) -> None:
        """DHCP on every wired interface, or what ``network:`` says (static, VLAN)."""
        from agent import modules
        for error in modules.apply(modules.plan_network(self.config, self.facts()), self.run_command,
                                   services=Supervisor(self)):
            self.errors.append(f"network: {error}")
            log(f"error: network: {error}")

    def console_services(self) -> None:
        autologin = self.mode == "live" and self.args.get("basalt.console") != "login"
        for tty in consoles(self.args):
            name = "console-" + os.path.basename(tty)
            if autologin:
                self.add(Service(name, ["/bin/sh", "-l"], tty=tty, env={"BASALT_CONSOLE": "1"}))
            else:
                self.add(Service(name, ["/usr/bin/getty", "-L", "115200", os.path.basename(tty), "vt100"]))

    def power_button(self) -> None:
        for dev in sorted(os.listdir("/sys/class/input")):
            if dev.startswith("event") and read(f"/sys/class/input/{dev}/device/name").strip() == "Power Button":
                self.power_fds.append(os.open(f"/dev/input/{dev}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))

    # --- supervision --------------------------------------------------------
    def add(self, svc: Service) -> None:
        self.services[svc.name] = svc
        self.start(svc)

    def ensure(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Service ``name`` running ``argv``: started, restarted with new arguments, or left be."""
        svc = self.services.get(name)
        if svc is not None and svc.argv == argv and svc.env == (env or {}):
            return
        if svc is not None:
            self.remove(name)
        self.add(Service(name, argv, env=env))

    def remove(self, name: str) -> None:
        svc = self.services.pop(name, None)
        if svc is not None and svc.pid:
            try:
                os.killpg(svc.pid, _signal.SIGTERM)
            except ProcessLookupError:
                pass

    def start(self, svc: Service) -> None:
        svc.restart_at = None
        try:
            log_path = None if svc.tty else f"{LOG_DIR}/{svc.name}.log"
            svc.pid = spawn(svc.argv, svc.tty, svc.env, log_path)
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
            if svc is None and pid == self.installer:
                self.installer = None
                code = os.waitstatus_to_exitcode(status)
                if code != 0 and self.action is None:  # not the installer's own power off stopping it
                    self.errors.append(f"install: basalt install exited {code} (its messages are on the console)")
                    log(f"error: unattended install failed (exit {code}); the live system keeps running")
                continue
            if svc is None:
                continue  # an orphan re-parented to us: reaped, nothing more
            svc.pid = None
            if self.services.get(svc.name) is not svc:
                svc.state = "stopped"
                continue  # removed (a config change): not restarted
            ran = time.monotonic() - svc.started
            svc.failures = 0 if ran > 60 else svc.failures + 1
            svc.state = "backoff"
            if self.action is None:
                delay = 0.2 if svc.tty else svc.backoff()
                svc.restart_at = time.monotonic() + delay
                if not svc.tty:
                    code = os.waitstatus_to_exitcode(status)
                    log(f"service {svc.name} exited ({code}); restarting in {delay:.1f}s")

    def report_host_key(self) -> None:
        """The SSH host key's fingerprint on the console, to check a first login against."""
        from agent import modules
        if os.path.exists(modules.HOST_KEY):
            log(f"ssh host key: ED25519 {modules.host_key_fingerprint()}")

    def unattended_install(self) -> None:
        """A live boot whose config says to install (install.device and install.silent, or
        basalt.mode=install): ``basalt install`` runs by itself, its messages on the console."""
        if self.mode != "live":
            return
        from agent import install
        if install.wanted_at_boot(self.config, read("/proc/cmdline")):
            log("unattended install: starting basalt install")
            self.installer = spawn([layout.AGENT, "install", "--unattended"], log_path="/dev/console")

    # --- basalt config apply [--try] / confirm ------------------------------------
    def handle_request(self) -> None:
        import json
        try:
            with open(REQUEST) as f:
                request = json.load(f)
            os.unlink(REQUEST)
        except (OSError, ValueError):
            return  # a plain SIGHUP: nothing asked
        if request.get("command") == "confirm":
            result = self.confirm()
        else:
            result = self.apply_request(request.get("try"))
        path = RESULT.format(int(request.get("id", 0)))
        with open(path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)

    def apply_request(self, try_s: float | None) -> dict[str, object]:
        from agent import sources
        if self.trying:
            return {"ok": False, "errors": ["a 'config apply --try' is waiting: confirm it, or wait for its revert"]}
        previous = (self.config, self.merged, self.config_sources)
        try:
            os.unlink(sources.REJECTED)  # asked for again, explicitly: try it again
        except FileNotFoundError:
            pass
        errors = self.reconfigure()
        if self.config_fallback:
            return {"ok": False, "errors": errors, "applied": False}
        if try_s:
            self.trying = Trial(*previous, seconds=float(try_s))
            log(f"config applied on trial: reverts in {try_s}s unless 'basalt config confirm'")
        else:
            sources.save_known_good(self.merged)  # type: ignore[arg-type]
            log("config applied")
        return {"ok": not errors, "errors": errors, "applied": True, "trial_s": try_s}

    def confirm(self) -> dict[str, object]:
        from agent import sources
        if not self.trying:
            return {"ok": False, "errors": ["nothing to confirm: no 'config apply --try' is waiting"]}
        self.trying = None
        sources.save_known_good(self.merged)  # type: ignore[arg-type]
        log("config confirmed")
        return {"ok": True, "errors": []}

    def revert(self) -> None:
        """The trial ran out unconfirmed: put back the config in force before it, and remember
        the rejected sources so the next boot does not apply them either."""
        from agent import sources
        trying, self.trying = self.trying, None
        assert trying is not None
        rejected = getattr(self.merged, "digest", "")
        self.config, self.merged, self.config_sources = trying.config, trying.merged, trying.sources
        self.config_fallback = f"reverted: 'config apply --try {trying.seconds:g}' was not confirmed in time"
        if rejected:
            sources.reject(rejected)
        self.guarded("hostname", self.set_hostname, self.config)
        from agent import modules
        for phase in ("initrd", "boot"):
            self.run_phase(phase, (*modules.ONCE_PER_BOOT, "scripts"))
        self.network()
        self.errors.append(f"config: {self.config_fallback}")
        log(f"error: config: {self.config_fallback}; the previous config is back")

    def write_status(self) -> None:
        import json
        status = {"version": self.version, "mode": self.mode, "hostname": self.hostname,
                  "ready_ms": self.ready_ms, "phases": self.phases, "errors": self.errors,
                  "config_sources": self.config_sources, "config_fallback": self.config_fallback,
                  "trial_deadline_s": round(self.trying.deadline - time.monotonic()) if self.trying else None,
                  "slot": read(layout.RUN_SLOT, self.mode).strip(),
                  "state_device": read(layout.RUN_STATE_DEVICE).strip(),
                  "services": {n: {"state": s.state, "pid": s.pid, "failures": s.failures}
                               for n, s in self.services.items()}}
        with open(layout.RUN_STATUS + ".tmp", "w") as f:
            json.dump(status, f, indent=1)
        os.replace(layout.RUN_STATUS + ".tmp", layout.RUN_STATUS)

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

    def install_signals(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wfd)
        for sig in HANDLED:
            _signal.signal(sig, lambda *_: None)
        return rfd

    def loop(self, rfd: int) -> None:
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        for fd in self.power_fds:
            poller.register(fd, select.POLLIN)
        self.guarded("late coldplug", self.late_coldplug)
        uevents = hotplug.open_socket()
        if uevents is not None:
            poller.register(uevents.fileno(), select.POLLIN)
        idle_at: float | None = time.monotonic() + IDLE_REPORT_S
        rotate_at = time.monotonic() + ROTATE_CHECK_S
        runtime_deadline = time.monotonic() + RUNTIME_WAIT_S
        dirty = True
        while True:
            try:
                now = time.monotonic()
                deadlines = [s.restart_at for s in self.services.values() if s.restart_at] + \
                            ([idle_at] if idle_at else []) + ([now + 0.5] if self.runtime_pending else []) + \
                            ([self.trying.deadline] if self.trying else []) + [rotate_at]
                timeout = max(0, int((min(deadlines) - now) * 1000) + 1) if deadlines else None
                for fd, _ in poller.poll(timeout):
                    dirty = True
                    if fd == rfd:
                        for signum in os.read(rfd, 256):
                            if signum in ACTIONS and self.action is None:
                                self.action = ACTIONS[signum]
                            elif signum == _signal.SIGHUP:
                                self.guarded("config request", self.handle_request)
                    elif uevents is not None and fd == uevents.fileno():
                        self.guarded("hotplug", lambda: self.hotplug(hotplug.drain(uevents)))
                    else:
                        self.handle_power(fd)
                self.reap()
                if self.action:
                    self.shutdown(self.action)
                now = time.monotonic()
                for svc in self.services.values():
                    if svc.restart_at is not None and svc.restart_at <= now:
                        self.start(svc)
                        dirty = True
                if self.runtime_pending and (os.path.exists(NETWORK_UP) or now >= runtime_deadline):
                    self.runtime_pending = False
                    if not os.path.exists(NETWORK_UP):
                        log("network not up after 120s: running the runtime phase anyway")
                    self.guarded("runtime modules", self.runtime)
                    dirty = True
                if now >= rotate_at:
                    rotate_at = now + ROTATE_CHECK_S
                    self.guarded("log rotation", rotate_logs)
                if self.trying and now >= self.trying.deadline:
                    self.guarded("revert", self.revert)
                    dirty = True
                if idle_at and now >= idle_at:
                    idle_at = None
                    log(f"idle mem_used_kb={system.mem_used_kb()} rss_kb={rss_kb()}")
                if dirty:
                    self.write_status()
                    dirty = False
            except Exception:  # noqa: BLE001 - never leave the loop
                log("error in main loop: " + format_exception())
                time.sleep(1)

    # --- shutdown -----------------------------------------------------------
    def shutdown(self, action: str) -> None:
        log(f"stopping services ({action})")
        for svc in self.services.values():
            svc.restart_at = None
            if svc.pid:
                try:
                    os.killpg(svc.pid, _signal.SIGTERM)
                except ProcessLookupError:
                    pass
        try:
            os.kill(-1, _signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and self.by_pid:
            self.reap()
            time.sleep(0.05)
        try:
            os.kill(-1, _signal.SIGKILL)
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
        system.reboot(action)
        while True:  # reboot(2) does not return; if it fails we must still not exit
            time.sleep(60)

    def boot(self) -> None:
        self.early_mounts()
        self.guarded("ctrl-alt-del", system.disable_ctrl_alt_del)
        self.phase("state", self.grow_state)
        self.config = self.phase("config", self.load_config) or {}  # type: ignore[assignment]
        self.phase("hostname", self.set_hostname, self.config)
        self.phase("initrd_modules", self.run_phase, "initrd")
        self.phase("coldplug", self.coldplug)
        self.phase("containers", self.containers)
        self.phase("network", self.network)
        self.phase("boot_modules", self.run_phase, "boot")
        from agent import bootargs
        self.runtime_pending = bool(self.config) or bootargs.datasource_url(read("/proc/cmdline")) is not None \
            or os.path.exists(K3S_BINARY)
        if self.merged is not None and not self.merged.problems:  # type: ignore[attr-defined]
            from agent import sources
            self.guarded("known-good config", sources.save_known_good, self.merged)
        self.guarded("ssh host key", self.report_host_key)
        self.phase("consoles", self.console_services)
        self.phase("power_button", self.power_button)
        self.ready_ms = system.boot_ms()
        if "basalt.debug" in self.args:
            log("phases " + " ".join(f"{k}={v}" for k, v in self.phases.items()))


def rss_kb() -> int:
    for line in read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    if os.getpid() != 1:
        print("basalt init: must run as PID 1", file=sys.stderr)
        return 2
    init = Init()
    rfd = init.install_signals()
    try:
        init.boot()
    except BaseException:  # noqa: BLE001
        log("error during boot: " + format_exception())
        init.add(Service("rescue", ["/bin/sh", "-l"], tty="/dev/console"))
    log(f"ready version={init.version} boot_ms={init.ready_ms or system.boot_ms()} "
        f"mem_used_kb={system.mem_used_kb()} errors={len(init.errors)}")
    init.guarded("unattended install", init.unattended_install)
    while True:
        try:
            init.loop(rfd)
        except BaseException:  # noqa: BLE001 - even KeyboardInterrupt/SystemExit must not end PID 1
            log("error: " + format_exception())
            time.sleep(1)
