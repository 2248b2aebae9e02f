"""The agent's log: a line on the console and, timestamped, in ``/run/basalt/agent.log``; and the
errors a boot collects for ``basalt status`` (each one logged as it is recorded).

Standard library C modules only: it is imported on every boot.
"""

from __future__ import annotations

import time

from agent import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


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


class Errors(list):  # type: ignore[type-arg]
    """``what: message`` strings, as ``basalt status`` shows them; each is logged when added."""

    def add(self, what: str, message: str) -> None:
        self.append(f"{what}: {message}")
        log(f"error: {what}: {message}")

    def guard(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None with the failure recorded: nothing may end PID 1."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - PID 1 survives every step
            self.add(what, str(exc))
            return None
