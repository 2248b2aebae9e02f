"""The on-device ``basalt`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from agent.errors import BasaltError

STATUS = Path("/run/basalt/status.json")
POWER_SIGNALS = {"poweroff": signal.SIGUSR2, "reboot": signal.SIGTERM, "halt": signal.SIGUSR1}


def cmd_power(args: argparse.Namespace) -> int:
    os.kill(1, POWER_SIGNALS[args.command])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent import system
    if not STATUS.is_file():
        raise BasaltError.simple("no status yet: the agent is not running as PID 1",
                                 hint="basalt status works on a booted Basalt node")
    status = json.loads(STATUS.read_text())
    status["uptime_ms"] = system.boot_ms()
    status["mem_used_kb"] = system.mem_used_kb()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"Basalt {status['version']} ({status['mode']} mode) on {status['hostname']}")
    print(f"ready after {status['ready_ms']} ms; up {status['uptime_ms'] // 1000} s; "
          f"memory used {status['mem_used_kb'] // 1024} MiB")
    for name, svc in sorted(status["services"].items()):
        print(f"  {name:<20} {svc['state']:<10} pid={svc['pid']} failures={svc['failures']}")
    for err in status["errors"]:
        print(f"  error: {err}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "show":
        from agent import sources
        merged = sources.gather(Path("/proc/cmdline").read_text())
        print(sources.show(merged) or "(no config)")
        for problem in merged.problems:
            print(f"left out: {problem.render()}", file=sys.stderr)
        return 1 if merged.problems else 0
    from agent.config import load_config
    path = args.file or "/run/basalt/medium/basalt/config.yaml"
    loaded = load_config(path)
    if loaded.problems:
        print("\n".join(p.render() for p in loaded.problems), file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    path = Path("/usr/lib/basalt/version")
    print(path.read_text().strip() if path.is_file() else "unknown")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="basalt", description="Basalt node agent")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="run as PID 1 (started by the initramfs)")
    for name in POWER_SIGNALS:
        sub.add_parser(name, help=f"{name} the node cleanly")
    st = sub.add_parser("status", help="version, mode, services, errors")
    st.add_argument("--json", action="store_true")
    sub.add_parser("version", help="print the OS version")
    cfg = sub.add_parser("config", help="site configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    val = cfg_sub.add_parser("validate", help="check a config.yaml; every problem as file:line: path: message")
    val.add_argument("file", nargs="?", help="default: the config baked onto the boot medium")
    cfg_sub.add_parser("show", help="the merged config, each value with the source that set it")
    args = parser.parse_args(argv)
    if args.command == "init":
        from agent import init
        return init.main()
    handlers = {"status": cmd_status, "version": cmd_version, "config": cmd_config,
                **{n: cmd_power for n in POWER_SIGNALS}}
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
