"""The k3OS/Basalt section of a config, shared by the config modules, k3s, the health gate and PID 1
(no import between them)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def section(config: dict[str, Any]) -> dict[str, Any]:
    """The k3OS/Basalt section, ``basalt:`` winning over ``k3os:`` key by key."""
    return {**config.get("k3os", {}), **config.get("basalt", {})}


HEALTH_TIMEOUT_S = 300  # upgrade.health_timeout's default


def upgrade_settings(config: dict[str, Any]) -> dict[str, Any]:
    upgrade = section(config).get("upgrade", {})
    return upgrade if isinstance(upgrade, dict) else {}


def health_timeout(config: dict[str, Any]) -> float:
    return float(upgrade_settings(config).get("health_timeout", HEALTH_TIMEOUT_S))
