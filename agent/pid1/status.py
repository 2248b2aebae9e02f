"""The node's status as PID 1 sees it, written atomically to ``/run/basalt/status.json`` whenever
something changed; ``basalt status`` reads it and adds what any process can see."""

from __future__ import annotations

from agent import files, layout
from agent.files import read_text


def write(fields: dict[str, object], path: str = layout.RUN_STATUS) -> None:
    import json
    status = {**fields, "slot": read_text(layout.RUN_SLOT, str(fields.get("mode", "live"))).strip(),
              "state_device": read_text(layout.RUN_STATE_DEVICE).strip()}
    files.write_atomic(path, json.dumps(status, indent=1))


def rss_kb() -> int:
    for line in read_text("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
