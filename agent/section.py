"""The k3OS/Basalt section of a config, shared by the config modules and k3s (no import between them)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def section(config: dict[str, Any]) -> dict[str, Any]:
    """The k3OS/Basalt section, ``basalt:`` winning over ``k3os:`` key by key."""
    return {**config.get("k3os", {}), **config.get("basalt", {})}
