"""The node's status as PID 1 sees it, written atomically to ``/run/basalt/status.json`` whenever
something changed; ``basalt status`` reads it and adds what any process can see."""

from __future__ import annotations

from agent import files, layout
from agent.files import read_text
from agent.jsontext import dumps


def write(fields: dict[str, object], path: str = layout.RUN_STATUS) -> None:
    status = {**fields, "slot": read_text(layout.RUN_SLOT, str(fields.get("mode", "live"))).strip(),
              "state_device": read_text(layout.RUN_STATE_DEVICE).strip()}
    files.write_atomic(path, dumps(status))


def rss_kb() -> int:
    for line in read_text("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# The initramfs's steps (builder/initramfs/init ``mark``), in the order it takes them.
INITRAMFS_STEPS = {"init": "kernel (to the initramfs's /init)", "modules": "initramfs: modules",
                   "medium": "initramfs: boot medium found", "root": "initramfs: root mounted",
                   "state": "initramfs: state partition", "switch_root": "initramfs: mounts and switch_root"}


def timeline(initramfs: str, phases: dict[str, int], ready_ms: int | None) -> list[dict[str, object]]:
    """From the kernel's start to ready: each step, when it ended and how long it took (ms). The
    initramfs's steps (its ``NAME=SECONDS`` line, bounded; junk left out), the interpreter's start
    (switch_root to Python's first line), the agent's imports, each agent phase, then ready."""
    marks: list[tuple[str, int]] = []
    for item in initramfs[:4096].split():
        name, _, value = item.partition("=")
        if name in INITRAMFS_STEPS and name not in dict(marks):
            try:
                marks.append((name, int(float(value) * 1000)))
            except ValueError:
                continue
    steps = [(INITRAMFS_STEPS[n], at) for n, at in marks]
    for key, at in phases.items():
        if key == "python_start_ms":
            steps.append(("interpreter start (switch_root to Python's first line)", at))
        elif key == "agent_start_ms":
            steps.append(("interpreter: the agent's imports (to its first line)", at))
        elif key.endswith("_done_ms"):
            steps.append((f"agent: {key.removesuffix('_done_ms').replace('_', ' ')}", at))
    if ready_ms is not None:
        steps.append(("ready", ready_ms))
    out: list[dict[str, object]] = []
    before = 0
    for name, at in steps:
        if ready_ms is not None and at > ready_ms and name != "ready":
            continue  # after ready (the runtime phase, late coldplug): not on the way to it
        out.append({"step": name, "at_ms": at, "took_ms": max(0, at - before)})
        before = at
    return out
