"""The on-device ``basalt`` command.

``basalt status``, ``version``, ``health`` and the power commands are what scripts, monitors and
PID 1 run most, on nodes where a Python import read cold from the squashfs is slow (a Pi, an
emulated machine): they import neither argparse (nor the shutil, gettext and locale it brings
along) nor the apps CLI (HTTP, Kubernetes). Their plain spellings (``PLAIN``) skip the parser;
everything else goes through it, and ``app`` adds its arguments only when it is the command."""

from __future__ import annotations

import os
import sys

from agent import files, jsontext, layout, system
from agent.errors import BasaltError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

STATUS = layout.RUN_STATUS


def cmd_power(args: argparse.Namespace) -> int:
    system.request_power(args.command)
    return 0


def boot_timeline(steps: list[dict[str, Any]]) -> str:
    """The timeline in one line, by part: kernel, initramfs, interpreter, agent (``--json``: each step)."""
    parts: dict[str, int] = {}
    for step in steps:
        name = str(step["step"])
        part = ("kernel" if name.startswith("kernel") else "initramfs" if name.startswith("initramfs") else
                "interpreter" if name.startswith("interpreter") else "agent")
        parts[part] = parts.get(part, 0) + int(step["took_ms"])
    return ", ".join(f"{part} {ms / 1000:.1f} s" for part, ms in parts.items())


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with open(STATUS, "rb") as f:
            status = jsontext.loads(f.read())
    except FileNotFoundError:
        raise BasaltError.simple("no status yet: the agent is not running as PID 1",
                                 hint="basalt status works on a booted Basalt node") from None
    status["uptime_ms"] = system.boot_ms()
    status["mem_used_kb"] = system.mem_used_kb()
    status["addresses"] = addresses()
    if status.get("mode") == "installed":
        status.update(upgrade_status())
    if args.json:
        print(jsontext.dumps(status, indent=2))
        return 0
    print(f"Basalt {status['version']} ({status['mode']} mode) on {status['hostname']}")
    print(f"ready after {status['ready_ms']} ms; up {status['uptime_ms'] // 1000} s; "
          f"memory used {status['mem_used_kb'] // 1024} MiB")
    if status.get("timeline"):
        print(f"boot: {boot_timeline(status['timeline'])}")
    print(f"slot: {status.get('slot', '-')}; state: {status.get('state_device') or 'tmpfs (nothing persists)'}")
    if status.get("slots"):
        from agent.upgrade import slots
        print(f"slots: {slots.summary(status['slots'])}")
        print(f"boot: {boot_line(status['boot'])}")
        last = status.get("upgrade", {}).get("last")
        if last:
            print(f"last upgrade: {last.get('result')} {last.get('version')} on slot {last.get('slot')} at "
                  f"{last.get('at')}" + (f": {last['reason']}" if last.get("reason") else ""))
        for version, failed in sorted(status.get("upgrade", {}).get("failed", {}).items()):
            print(f"  failed version {version}: {failed.get('reason')}")
    from agent.config import site
    print(f"site: {site.describe(status.get('site'))}")
    print("config: " + (", ".join(status.get("config_sources", [])) or "none"))
    if status.get("config_fallback"):
        print(f"  last known-good in use: {status['config_fallback']}")
    if status.get("trial_deadline_s") is not None:
        print(f"  trial config: reverts in {status['trial_deadline_s']} s unless 'basalt config confirm'")
    print("addresses: " + (" ".join(status["addresses"]) or "none"))
    print("services:")
    for name, svc in sorted(status["services"].items()):
        print(f"  {name:<20} {svc['state']:<10} pid={svc['pid']} failures={svc['failures']}")
    for err in status["errors"]:
        print(f"error: {err}")
    return 0


def upgrade_status() -> dict[str, object]:
    """Both slots (each with its version and whether it is the committed one), the boot selection
    (a trial armed, and its boots left), and the upgrade record: the last result, failed versions."""
    from agent.upgrade import bootsel, slots
    described = slots.describe()
    state = slots.load_state()
    try:
        selection = bootsel.backend().read()
        boot: dict[str, object] = selection.to_json()
    except OSError as exc:
        boot = {"error": str(exc)}
    for slot, info in described.items():
        if info["state"] == "empty":
            continue
        info["committed"] = slot == boot.get("committed")
        info["passed_gate"] = info.get("version") is not None and \
            state.get("committed", {}).get(slot) == info.get("version")
    return {"slots": described, "boot": boot,
            "upgrade": {k: state[k] for k in ("last", "failed") if k in state}}


def boot_line(boot: dict[str, object]) -> str:
    if "error" in boot:
        return f"cannot read the boot selection: {boot['error']}"
    line = f"committed slot {boot.get('committed')}"
    if boot.get("trial"):
        line += f"; slot {boot['trial']} on trial ({boot.get('tries')} boots left)"
    return line


def cmd_upgrade(args: argparse.Namespace) -> int:
    from agent.upgrade import upgrade
    return upgrade.upgrade(args.source, force=args.force, reboot=not args.no_reboot)


def cmd_rollback(args: argparse.Namespace) -> int:
    from agent.upgrade import upgrade
    return upgrade.rollback(reboot=not args.no_reboot)


def cmd_health(args: argparse.Namespace) -> int:
    from agent.upgrade import health
    return health.main()


def addresses() -> list[str]:
    """``iface address/prefix`` for every address but loopback's (busybox ip)."""
    rows = []
    for line in (system.output(["ip", "-o", "addr", "show"]) or "").splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1].rstrip(":") != "lo" and fields[2] in ("inet", "inet6"):
            rows.append(f"{fields[1].rstrip(':')}={fields[3]}")
    return rows


def request(command: str, timeout: float = 300.0, **fields: object) -> dict[str, object]:
    """Ask PID 1 (which owns the services) to apply or confirm, and wait for its answer."""
    import json
    import signal
    import time
    from pathlib import Path
    if os.geteuid() != 0:
        raise BasaltError.simple(f"basalt config {command}: permission denied", hint="run it as root")
    ident = int(time.time() * 1000) % 10**9
    result = Path(layout.RUN_RESULT.format(ident))
    files.write_atomic(layout.RUN_REQUEST, json.dumps({"command": command, "id": ident, **fields}), 0o600)
    os.kill(1, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.exists():
            answer: dict[str, object] = json.loads(result.read_text())
            result.unlink()
            return answer
        time.sleep(0.2)
    raise BasaltError.simple(f"basalt config {command}: no answer from the agent in {timeout:.0f} s",
                             hint=f"see {layout.RUN_AGENT_LOG}")


def try_seconds(text: str) -> float:
    """argparse's type for --try: its message, not a traceback, for nan, inf, -5 or 'soon'."""
    import argparse

    from agent.pid1.control import trial_seconds
    try:
        return trial_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_apply(args: argparse.Namespace) -> int:
    from agent.config import sources
    merged = sources.gather(files.read_text("/proc/cmdline"), known_good="/nonexistent", rejected="/nonexistent")
    if merged.problems:  # checked here too, so the problems print with their lines and hints
        print("\n".join(p.render() for p in merged.problems), file=sys.stderr)
        print("basalt config apply: nothing applied; the config in force stays", file=sys.stderr)
        return 1
    t = merged.value.get("app_tls") or {}
    if t.get("mode") == "acme":  # the one setting only the network can check: asked before anything changes
        from agent.apps import tls
        from agent.errors import BasaltError
        try:
            tls.probe_acme(str(t.get("acme_directory", "")))
        except BasaltError as exc:
            print(exc.render(), file=sys.stderr)
            print("basalt config apply: nothing applied; the config in force stays", file=sys.stderr)
            return 1
    answer = request("apply", **{"try": args.try_s})
    for error in answer.get("errors", []):  # type: ignore[attr-defined]
        print(f"error: {error}", file=sys.stderr)
    if answer.get("applied") and args.try_s:
        print(f"applied on trial: reverts in {args.try_s:g} s unless 'basalt config confirm'")
    elif answer.get("applied"):
        print("applied" + (" (with errors above)" if answer.get("errors") else ""))
    return 0 if answer.get("ok") else 1


def cmd_confirm(args: argparse.Namespace) -> int:
    answer = request("confirm")
    for error in answer.get("errors", []):  # type: ignore[attr-defined]
        print(f"error: {error}", file=sys.stderr)
    if answer.get("ok"):
        print("confirmed: this config is now the last known-good")
    return 0 if answer.get("ok") else 1


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "apply":
        return cmd_apply(args)
    if args.config_command == "confirm":
        return cmd_confirm(args)
    if args.config_command == "show":
        from agent.config import sources
        merged = sources.gather(files.read_text("/proc/cmdline"))
        print(sources.show(merged) or "(no config)")
        if merged.fallback:
            print(f"last known-good in use: {merged.fallback}", file=sys.stderr)
        for problem in merged.problems:
            print(f"left out: {problem.render()}", file=sys.stderr)
        return 1 if merged.problems else 0
    if not args.file:  # every source this node reads, as the agent reads them
        from agent.config import sources
        merged = sources.gather(files.read_text("/proc/cmdline"), known_good="/nonexistent",
                                rejected="/nonexistent")
        for warning in merged.warnings:
            print(warning.render(), file=sys.stderr)
        if merged.problems:
            print("\n".join(p.render() for p in merged.problems), file=sys.stderr)
            return 1
        print(f"ok: {', '.join(merged.sources) or 'no config sources'}")
        return 0
    from agent.config.validate import load_config
    loaded = load_config(args.file)
    for warning in loaded.warnings:
        print(warning.render(), file=sys.stderr)
    if loaded.problems:
        print("\n".join(p.render() for p in loaded.problems), file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from agent.disk import install, targets
    host = targets.Host.running()
    if args.list:
        print(targets.listing(host))
        return 0
    from agent.config import sources
    settings = install.settings_from(sources.gather(files.read_text("/proc/cmdline")).value)
    if not args.unattended:
        for name in ("device", "config_url", "iso_url"):
            if getattr(args, name):
                setattr(settings, name, getattr(args, name))
        for name in ("silent", "force", "no_format", "power_off", "reboot"):
            if getattr(args, name):
                setattr(settings, name, True)
    return install.run(settings, unattended=args.unattended, host=host)


def cmd_version(args: argparse.Namespace) -> int:
    print(files.read_text(layout.LIB_VERSION).strip() or "unknown")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from agent import doctor
    d = doctor.Doctor(args.root)
    results = d.run()
    failed = any(r.status == "fail" for r in results)
    if args.json:
        print(json.dumps({"kernel": d.release, "ready": not failed, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        print(doctor.render(results, d.release))
    return 1 if failed else 0


class Args:
    """Parsed arguments (argparse.Namespace's part the commands read), for ``PLAIN``."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


# argv spellings that need no parser, and what argparse makes of them: what scripts, monitors and
# PID 1 run (``health``: the upgrade gate after each boot of an installed node)
PLAIN: dict[tuple[str, ...], dict[str, object]] = {
    ("status",): {"command": "status", "json": False}, ("status", "--json"): {"command": "status", "json": True},
    ("version",): {"command": "version"}, ("health",): {"command": "health"},
    **{(name,): {"command": name} for name in system.POWER_SIGNALS},
}


def cmd_app(args: argparse.Namespace) -> int:
    from agent.apps import cli as apps_cli
    return apps_cli.main(args)


def parse(argv: list[str]) -> argparse.Namespace:
    import argparse
    parser = argparse.ArgumentParser(prog="basalt", description="Basalt node agent")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="run as PID 1 (started by the initramfs)")
    for name in system.POWER_SIGNALS:
        sub.add_parser(name, help=f"{name} the node cleanly")
    st = sub.add_parser("status", help="version, mode, services, errors")
    st.add_argument("--json", action="store_true")
    sub.add_parser("version", help="print the OS version")
    doc = sub.add_parser("doctor", help="check that k3s and containers can run here; exit 1 if not")
    doc.add_argument("--json", action="store_true")
    doc.add_argument("--root", default="/", help=argparse.SUPPRESS)
    cfg = sub.add_parser("config", help="site configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    val = cfg_sub.add_parser("validate", help="check a config.yaml; every problem as file:line: path: message")
    val.add_argument("file", nargs="?", help="default: every config source of this node")
    cfg_sub.add_parser("show", help="the merged config, each value with the source that set it")
    app = cfg_sub.add_parser("apply", help="re-apply the config sources to the running node")
    app.add_argument("--try", dest="try_s", type=try_seconds, metavar="SECONDS",
                     help="revert unless 'basalt config confirm' comes within SECONDS (1 to 86400)")
    cfg_sub.add_parser("confirm", help="keep the config applied with 'apply --try'")
    ins = sub.add_parser("install", help="install this live system to a disk (erases it; asks first)")
    ins.add_argument("device", nargs="?", help="the disk, e.g. /dev/vda (default: install.device, or ask)")
    ins.add_argument("--list", action="store_true", help="list the disks and what is on them, then exit")
    ins.add_argument("--yes", "--silent", dest="silent", action="store_true", help="do not ask for confirmation")
    ins.add_argument("--force", action="store_true", help="install to a removable disk too")
    ins.add_argument("--no-format", action="store_true",
                     help="keep the disk's Basalt partitions and its state partition (a reinstall)")
    ins.add_argument("--config-url", help="a config.yaml to fetch and install, over the node's merged config")
    ins.add_argument("--iso-url", help="install from this ISO (downloaded) instead of the boot medium")
    when = ins.add_mutually_exclusive_group()
    when.add_argument("--power-off", action="store_true", help="power off when installed")
    when.add_argument("--reboot", action="store_true", help="reboot into the installed disk")
    ins.add_argument("--unattended", action="store_true", help=argparse.SUPPRESS)  # init: settings from config
    upg = sub.add_parser("upgrade", help="write a signed bundle to the other slot, boot it on trial")
    upg.add_argument("source", help="a .bundle file, or an http(s) URL (resumed and retried)")
    upg.add_argument("--force", action="store_true", help="also a version that failed on this node before")
    upg.add_argument("--no-reboot", action="store_true", help="arm the trial, but do not reboot now")
    rb = sub.add_parser("rollback", help="commit the other slot (a version that passed its gate here) and reboot")
    rb.add_argument("--no-reboot", action="store_true", help="switch, but do not reboot now")
    sub.add_parser("health", help=argparse.SUPPRESS)  # started by PID 1 after each boot of an installed node
    apps = sub.add_parser("app", help="apps: run, stage, promote, weight, scale, ps, logs, rm")
    if next((a for a in argv if not a.startswith("-")), "") == "app":  # the command: its arguments
        from agent.apps import cli as apps_cli
        apps_cli.add_arguments(apps)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plain = PLAIN.get(tuple(argv))
    args: argparse.Namespace = Args(debug=False, **plain) if plain else parse(argv)  # type: ignore[assignment]
    if args.command == "init":
        from agent.pid1 import init
        return init.main()
    handlers = {"status": cmd_status, "version": cmd_version, "config": cmd_config, "doctor": cmd_doctor,
                "install": cmd_install, "upgrade": cmd_upgrade, "rollback": cmd_rollback, "health": cmd_health,
                "app": cmd_app,
                **{n: cmd_power for n in system.POWER_SIGNALS}}
    try:
        return handlers[args.command](args)
    except BasaltError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except OSError as exc:
        if args.debug:
            raise
        print(f"basalt {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
