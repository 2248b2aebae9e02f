"""Supervision: PID 1's services (console shells or gettys, DHCP, containerd, k3s), each
restarted with backoff when it exits, its output in its own log under ``/run/basalt/log``
(rotated in place), and every child reaped. Config modules start and stop services through
``Supervisor.start``/``stop`` (the ``modules.Services`` protocol).
"""

from __future__ import annotations

import _signal
import fcntl
import os
import termios
import time

from agent import layout
from agent.log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

LOG_DIR = layout.RUN_LOG
LOG_MAX = 1 << 20  # a service log is rotated past this size (logs live in RAM, under /run)
LOG_KEEP = 2  # rotated generations kept: name.log.1, name.log.2
STEADY_S = 60.0  # a service that ran this long before exiting starts its backoff afresh
# Signals PID 1 handles; a child gets them back at their defaults.
HANDLED = (_signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGPWR, _signal.SIGTERM, _signal.SIGINT,
           _signal.SIGCHLD, _signal.SIGHUP)
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


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


def spawn(argv: list[str] | Callable[[], list[str] | None], tty: str | None = None,
          env: dict[str, str] | None = None, log_path: str | None = None) -> int:
    """Start ``argv`` in a new session (its pid). ``argv`` may be a function the child calls to
    get it (None: exit 0 with nothing to run): work PID 1 hands off, and whose memory goes with
    the child."""
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
        run = argv() if callable(argv) else argv
        if run is None:
            os._exit(0)
        os.execve(run[0], run, {"PATH": PATH, "HOME": "/root", "TERM": "vt100", **(env or {})})
    except BaseException as exc:  # noqa: BLE001 - the child must never return into PID 1's loop
        try:
            what = argv[0] if isinstance(argv, list) and argv else "a command"
            os.write(2, f"basalt: cannot start {what}: {exc}\n".encode())
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


class Supervisor:
    def __init__(self, log_dir: str = LOG_DIR):
        self.log_dir = log_dir
        self.services: dict[str, Service] = {}
        self.by_pid: dict[int, Service] = {}
        self.watched: dict[int, Callable[[int], None]] = {}  # other children: pid -> called with the exit code
        self.stopping = False  # shutting down: nothing is restarted

    # The modules.Services protocol.
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.ensure(name, argv, env)

    def stop(self, name: str) -> None:
        self.remove(name)

    def add(self, svc: Service) -> None:
        self.services[svc.name] = svc
        self.launch(svc)

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

    def watch(self, pid: int, on_exit: Callable[[int], None]) -> None:
        """A child that is not a service (an unattended install): ``on_exit(code)`` when reaped."""
        self.watched[pid] = on_exit

    def launch(self, svc: Service) -> None:
        svc.restart_at = None
        try:
            log_path = None if svc.tty else f"{self.log_dir}/{svc.name}.log"
            svc.pid = spawn(svc.argv, svc.tty, svc.env, log_path)
        except OSError as exc:
            log(f"error: cannot start {svc.name}: {exc}")
            svc.failures += 1
            svc.restart_at = time.monotonic() + svc.backoff()
            return
        svc.started = time.monotonic()
        svc.state = "running"
        self.by_pid[svc.pid] = svc

    def next_restart(self) -> float | None:
        due = [s.restart_at for s in self.services.values() if s.restart_at is not None]
        return min(due) if due else None

    def restart_due(self, now: float) -> bool:
        started = False
        for svc in list(self.services.values()):
            if svc.restart_at is not None and svc.restart_at <= now:
                self.launch(svc)
                started = True
        return started

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
                on_exit = self.watched.pop(pid, None)
                if on_exit is not None:
                    on_exit(os.waitstatus_to_exitcode(status))
                continue  # else an orphan re-parented to us: reaped, nothing more
            svc.pid = None
            if self.services.get(svc.name) is not svc:
                svc.state = "stopped"
                continue  # removed (a config change): not restarted
            ran = time.monotonic() - svc.started
            svc.failures = 0 if ran > STEADY_S else svc.failures + 1
            svc.state = "backoff"
            if not self.stopping:
                delay = 0.2 if svc.tty else svc.backoff()
                svc.restart_at = time.monotonic() + delay
                if not svc.tty:
                    code = os.waitstatus_to_exitcode(status)
                    log(f"service {svc.name} exited ({code}); restarting in {delay:.1f}s")

    def stop_all(self, grace_s: float) -> None:
        """SIGTERM to every service and every other process, SIGKILL after ``grace_s``."""
        self.stopping = True
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
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.by_pid:
            self.reap()
            time.sleep(0.05)
        try:
            os.kill(-1, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reap()

    def status(self) -> dict[str, dict[str, object]]:
        return {n: {"state": s.state, "pid": s.pid, "failures": s.failures} for n, s in self.services.items()}
