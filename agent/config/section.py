"""The k3OS/Basalt section of a config, shared by the config modules, k3s, the health gate and PID 1
(no import between them)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


K3S_KEYS = frozenset({"server_url", "token", "k3s_args", "labels", "taints"})  # the section's keys for k3s


def section(config: dict[str, Any]) -> dict[str, Any]:
    """The k3OS/Basalt section, ``basalt:`` winning over ``k3os:`` key by key."""
    return {**config.get("k3os", {}), **config.get("basalt", {})}


def install_section(config: dict[str, Any]) -> dict[str, Any]:
    """The ``install:`` keys, k3OS's section under basalt's."""
    return {**(config.get("k3os") or {}).get("install", {}), **(config.get("basalt") or {}).get("install", {})}


def install_wanted_at_boot(config: dict[str, Any], cmdline: str) -> bool:
    """Does this live boot install by itself: a device and silent (k3OS's unattended form), or
    ``basalt.mode=install`` / ``k3os.mode=install`` on the kernel command line? (Here, not in
    agent/disk/install.py: PID 1 asks at every live boot, and the installer's imports are heavy.)"""
    from agent.config import bootargs
    s = install_section(config)
    mode = set(bootargs.values(cmdline, "basalt.mode", "k3os.mode"))
    return bool(s.get("device")) and (bool(s.get("silent")) or "install" in mode)


HEALTH_TIMEOUT_S = 300  # upgrade.health_timeout's default


def upgrade_settings(config: dict[str, Any]) -> dict[str, Any]:
    upgrade = section(config).get("upgrade", {})
    return upgrade if isinstance(upgrade, dict) else {}


def health_timeout(config: dict[str, Any]) -> float:
    return float(upgrade_settings(config).get("health_timeout", HEALTH_TIMEOUT_S))
