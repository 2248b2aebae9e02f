"""Shell commands the boot tests run in a guest, with what their answers mean."""

from __future__ import annotations

# When the kernel's random pool became ready, in seconds since it started ("" if it is not yet).
# Before the agent's interpreter starts, or Python's start waits for it (docs/architecture.md).
CRNG_READY_AT = "dmesg | sed -n 's/^\\[ *\\([0-9.]*\\)\\] random: crng init done/\\1/p'"


def crng_ready_before(answer: str, ms: int) -> bool:
    """``answer`` (CRNG_READY_AT's output) says the pool was ready before ``ms`` after the kernel started."""
    return bool(answer) and float(answer) * 1000 < ms
