"""Config modules: each declares the keys that activate it and the phase it runs in, and has
a pure ``plan(config, facts) -> actions``. ``apply`` carries actions out. A failing action
is reported and the rest still run.

Phases (as k3OS): ``initrd`` (first, before anything else the agent starts), ``boot``, and
``runtime`` (once the network is up).

Actions are plain tuples, so plans compare equal in tests:
  ("write", path, data: bytes, mode: int, owner: str)
  ("sysctl", name, value)      ("modprobe", name, params)      ("run", command)
"""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Callable
from typing import Any

from agent.config import settings as section

Action = tuple[Any, ...]
Plan = Callable[[dict[str, Any], dict[str, Any]], list[Action]]
ENCODINGS = {"": (), "b64": ("b64",), "base64": ("b64",), "gz": ("gz",), "gzip": ("gz",),
             "gz+b64": ("b64", "gz"), "gz+base64": ("b64", "gz"), "gzip+b64": ("b64", "gz"),
             "gzip+base64": ("b64", "gz")}


def decode(content: str, encoding: str) -> bytes:
    data = content.encode()
    for step in ENCODINGS[encoding]:  # base64 first, then gunzip
        data = base64.b64decode(data, validate=False) if step == "b64" else gzip.decompress(data)
    return data


def plan_write_files(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    return [("write", f["path"], decode(f.get("content", ""), f.get("encoding", "")),
             int(f.get("permissions", "0644"), 8), f.get("owner", "root:root"))
            for f in config.get("write_files", [])]


def plan_sysctl(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    return [("sysctl", name, str(value)) for name, value in sorted(section(config).get("sysctl", {}).items())]


def plan_modules(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    out = []
    for entry in section(config).get("modules", []):
        name, _, params = entry.partition(" ")
        out.append(("modprobe", name, params.strip()))
    return out


def plan_environment(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    env = section(config).get("environment", {})
    if not env:
        return []
    text = "".join(f"{k}={_shell_quote(str(v))}\n" for k, v in sorted(env.items()))
    return [("write", "/etc/environment", text.encode(), 0o644, "root:root")]


def plan_dns(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    servers = section(config).get("dns_nameservers", [])
    if not servers or facts.get("resolv_conf_from_dhcp"):
        return []  # fallback servers: DHCP's win when it supplies some
    text = "".join(f"nameserver {s}\n" for s in servers)
    return [("write", "/etc/resolv.conf", text.encode(), 0o644, "root:root")]


def _commands(key: str) -> Plan:
    def plan(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
        return [("run", cmd) for cmd in config.get(key, [])]
    plan.__name__ = f"plan_{key}"
    return plan


def _shell_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "@%+=:,./-_" for c in value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


# (name, phase, keys that activate it, plan). Order within a phase is the order here:
# files first (commands may run what they wrote), commands last.
MODULES: list[tuple[str, str, tuple[str, ...], Plan]] = [
    ("modules", "initrd", ("modules",), plan_modules),
    ("sysctl", "initrd", ("sysctl",), plan_sysctl),
    ("environment", "initrd", ("environment",), plan_environment),
    ("write_files", "initrd", ("write_files",), plan_write_files),
    ("init_cmd", "initrd", ("init_cmd",), _commands("init_cmd")),
    ("dns", "boot", ("dns_nameservers",), plan_dns),
    ("boot_cmd", "boot", ("boot_cmd",), _commands("boot_cmd")),
    ("run_cmd", "runtime", ("run_cmd",), _commands("run_cmd")),
]


def plan_phase(phase: str, config: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, list[Action]]]:
    """The modules of ``phase`` that ``config`` activates, each with its actions."""
    keys = set(config) | set(section(config))
    out = []
    for name, ph, activators, plan in MODULES:
        if ph == phase and keys & set(activators):
            try:
                out.append((name, plan(config, facts)))
            except Exception as exc:  # noqa: BLE001 - e.g. undecodable content: report, go on
                out.append((name, [("error", name, f"{type(exc).__name__}: {exc}")]))
    return out


# --- apply: the only part that touches the system ---------------------------------

def owner_ids(owner: str, root: str = "/") -> tuple[int, int]:
    user, _, group = owner.partition(":")
    return _lookup(user, os.path.join(root, "etc/passwd")), _lookup(group or user, os.path.join(root, "etc/group"))


def _lookup(name: str, table: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        with open(table) as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == name:
                    return int(fields[2])
    except OSError:
        pass
    raise LookupError(f"no such {'user' if table.endswith('passwd') else 'group'} '{name}'")


def write_atomic(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    tmp = f"{path}.basalt-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def apply(actions: list[Action], run: Callable[[list[str]], int], root: str = "/") -> list[str]:
    """Carry out ``actions``; returns the errors (each action is attempted regardless)."""
    errors = []
    for action in actions:
        try:
            kind = action[0]
            if kind == "write":
                _, path, data, mode, owner = action
                uid, gid = owner_ids(owner, root)
                write_atomic(os.path.join(root, path.lstrip("/")), data, mode, uid, gid)
            elif kind == "sysctl":
                _, name, value = action
                with open(os.path.join(root, "proc/sys", name.replace(".", "/")), "w") as f:
                    f.write(value)
            elif kind == "modprobe":
                _, name, params = action
                code = run(["/usr/bin/busybox", "modprobe", name, *params.split()])
                if code != 0:
                    raise OSError(f"modprobe {name} exited {code}")
            elif kind == "run":
                code = run(["/bin/sh", "-c", action[1]])
                if code != 0:
                    raise OSError(f"exited {code}")
            elif kind == "error":
                raise ValueError(action[2])
        except (OSError, LookupError, ValueError) as exc:
            errors.append(f"{action[0]} {action[1]}: {exc}")
    return errors
