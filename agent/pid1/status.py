"""The node's status as PID 1 sees it, written atomically to ``/run/basalt/status.json`` whenever
something changed; ``basalt status`` reads it and adds what any process can see."""

from __future__ import annotations

import os

from agent import layout
from agent.pid1.devices import read


def write(fields: dict[str, object], path: str = layout.RUN_STATUS) -> None:
    import json
    status = {**fields, "slot": read(layout.RUN_SLOT, str(fields.get("mode", "live"))).strip(),
              "state_device": read(layout.RUN_STATE_DEVICE).strip()}
    with open(path + ".tmp", "w") as f:
        json.dump(status, f, indent=1)
    os.replace(path + ".tmp", path)


def rss_kb() -> int:
    for line in read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
