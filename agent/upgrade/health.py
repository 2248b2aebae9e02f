"""After every boot of an installed node, ``basalt health`` (started by PID 1 after the ready
line) settles the boot selection:

- a trial boot (``basalt.trial=1`` from the boot menu, and the slot armed is this one) runs the
  health gate: the agent up, the services running, the k3s node Ready when this node runs k3s,
  and the site's ``upgrade.health_checks`` — all passing together within ``upgrade.health_timeout``.
  Pass: the slot is committed. Fail: the version is recorded as failed, with the reason, and the
  node reboots into the committed slot (the boot loader already counted the trial's one boot);
- a boot of the committed slot with a trial still armed means the trial never reached its commit
  (a panic, a hang the watchdog ended, a root that did not mount, power lost): its version is
  recorded as failed, and the trial disarmed;
- otherwise the booted slot's version is recorded as committed (a fresh install's slot A).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from agent import files, layout, system
from agent.config import bootargs
from agent.config.section import health_timeout, upgrade_settings
from agent.upgrade import bootsel, slots

CHECK_TIMEOUT_S = 60
POLL_S = 3.0
NEVER_COMMITTED = ("its trial boot did not reach its health gate's commit (a kernel panic, a hang ended by the "
                   "watchdog, a root filesystem that did not mount, or power lost)")


def say(message: str) -> None:
    line = f"basalt: health: {message}\n"
    sys.stderr.write(line)
    try:
        with open("/dev/console", "w") as f:
            f.write(line)
    except OSError:
        pass


LABEL_TIMEOUT_S = 600


def node_config() -> dict[str, Any]:
    from agent.config import sources
    value = sources.gather(files.read_text("/proc/cmdline")).value
    return value if isinstance(value, dict) else {}


def run_check(argv: list[str], timeout: float) -> tuple[bool, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"did not finish in {timeout:g}s"
    except OSError as exc:
        return False, str(exc)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, f"exited {proc.returncode}" + (f": {said[-1][:200]}" if said else "")


def problems(checks: list[dict[str, Any]], config: dict[str, Any] | None = None) -> list[str]:
    """What keeps the node from passing its gate now (empty: it passes)."""
    status = files.read_json(layout.RUN_STATUS)
    if not status.get("ready_ms"):
        return ["the agent has not reported ready"]
    out = []
    for name, svc in sorted(status.get("services", {}).items()):
        if svc.get("state") != "running":
            out.append(f"service {name} is {svc.get('state')} ({svc.get('failures')} failures)")
    if "k3s" in status.get("services", {}):
        from agent.modules import k3s
        ok, said = run_check(k3s.node_ready_argv(config or {}, str(status.get("hostname"))), CHECK_TIMEOUT_S)
        if not ok or not said.endswith("True"):
            out.append(f"the k3s node {status.get('hostname')} is not Ready ({said})")
    for check in checks:
        ok, said = run_check(["/bin/sh", "-c", str(check["run"])], float(check.get("timeout", CHECK_TIMEOUT_S)))
        if not ok:
            out.append(f"health check {check['name']} {said}")
    return out


def gate(config: dict[str, Any], clock: Any = time.monotonic, sleep: Any = time.sleep) -> str | None:
    """None when everything passes together before the timeout; else the last reason it did not."""
    timeout = health_timeout(config)
    checks = list(upgrade_settings(config).get("health_checks", []))
    deadline = clock() + timeout
    while True:
        found = problems(checks, config)
        if not found:
            return None
        if clock() >= deadline:
            return f"health gate failed after {timeout:g}s: " + "; ".join(found)
        sleep(POLL_S)


def relabel(config: dict[str, Any], version: str, slot: str, clock: Any = time.monotonic,
            sleep: Any = time.sleep) -> bool:
    """After a commit, the node labels basalt.io/version and basalt.io/slot through the API (k3s applies
    node-label only when a node registers), retried while k3s comes up."""
    status = files.read_json(layout.RUN_STATUS)
    if "k3s" not in status.get("services", {}):
        return False
    from agent.modules import k3s
    argv = k3s.relabel_argv(config, str(status.get("hostname")), version, slot)
    deadline = clock() + LABEL_TIMEOUT_S
    while True:
        ok, said = run_check(argv, CHECK_TIMEOUT_S)
        if ok:
            say(f"node labels set: basalt.io/version={version} basalt.io/slot={slot}")
            return True
        if clock() >= deadline:
            say(f"error: cannot set the node labels basalt.io/version and basalt.io/slot: {said}")
            return False
        sleep(POLL_S * 3)


def reboot() -> None:
    system.request_power("reboot")


def trial(booted: str, backend: bootsel.GrubEnv, version: str, image: str | None) -> int:
    say(f"trial boot of slot {booted} ({version}): running the health gate")
    config: dict[str, Any] = {}
    try:
        config = node_config()
        reason = gate(config)
    except Exception as exc:  # noqa: BLE001 - a gate that cannot run is a failed gate
        reason = f"the health gate could not run: {exc}"
    event = {"version": version, "image": image, "slot": booted}
    if reason is None:
        with slots.writable_boot():
            backend.commit(booted)
        state = slots.load_state()
        state.setdefault("committed", {})[booted] = version
        slots.save_state(state)
        slots.record({**event, "result": "committed"})
        say(f"slot {booted} ({version}) passed its health gate: committed")
        relabel(config, version, booted)
        return 0
    slots.record({**event, "result": "failed"}, reason)
    say(f"slot {booted} ({version}) failed: {reason}; rebooting into the committed slot")
    reboot()
    return 1


def settle(booted: str, backend: bootsel.GrubEnv, sel: bootsel.Selection) -> int:
    """A boot of the committed slot: close a trial that did not commit, record what is committed."""
    state = slots.load_state()
    version = str(slots.build_info(booted).get("version"))
    if sel.trial is not None:
        info = slots.build_info(sel.trial)
        tried = str(info.get("version"))
        last = state.get("last", {})
        with slots.writable_boot():
            backend.disarm()
        if sel.tries > 0:
            slots.record({"result": "not started", "version": tried, "image": info.get("image"), "slot": sel.trial,
                          "reason": "the boot loader did not start the trial (it could not save its try counter)"})
            say(f"the trial of slot {sel.trial} was not started by the boot loader; slot {booted} stays committed")
            return 1
        if not (last.get("result") == "failed" and last.get("version") == tried):
            slots.record({"result": "failed", "version": tried, "image": info.get("image"), "slot": sel.trial},
                         NEVER_COMMITTED)
        reason = slots.load_state().get("failed", {}).get(tried, {}).get("reason")
        say(f"slot {sel.trial} ({tried}) failed its trial ({reason}); back on slot {booted} ({version})")
        return 1
    if state.get("committed", {}).get(booted) != version:
        state.setdefault("committed", {})[booted] = version
        slots.save_state(state)
    return 0


def main(cmdline: str | None = None) -> int:
    booted = slots.booted()
    if booted not in layout.SLOTS:
        return 0
    backend = bootsel.backend()
    sel = backend.read()
    args = bootargs.parse(cmdline if cmdline is not None else files.read_text("/proc/cmdline"))
    info = slots.build_info(booted)
    if args.get("basalt.trial") == "1" and sel.trial == booted and sel.committed != booted:
        return trial(booted, backend, str(info.get("version")), info.get("image"))
    return settle(booted, backend, sel)
