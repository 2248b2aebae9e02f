"""The A/B slots of an installed disk, as the boot partition describes them: each slot's
``build.json`` (version, image, build time) beside its kernel, and which slot this boot came from."""

from __future__ import annotations

import os

from agent import files, jsontext, layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BUILD_INFO = "build.json"  # in each slot's directory on the boot partition, written with the slot


def describe(medium: str = layout.RUN_MEDIUM, booted: str | None = None) -> dict[str, dict[str, Any]]:
    """``{slot: {"state": "active" | "inactive" | "empty", "version", "image", "built"}}``."""
    if booted is None:
        try:
            with open(layout.RUN_SLOT) as f:
                booted = f.read().strip()
        except OSError:
            booted = ""
    out: dict[str, dict[str, Any]] = {}
    for slot in layout.SLOTS:
        try:
            with open(os.path.join(medium + layout.slot_dir(slot), BUILD_INFO), "rb") as f:
                info = jsontext.loads(f.read())
        except (OSError, ValueError):
            info = None
        if not isinstance(info, dict):
            out[slot] = {"state": "empty"}
            continue
        out[slot] = {"state": "active" if slot == booted else "inactive",
                     **{k: info.get(k) for k in ("version", "image", "built")}}
    return out


def summary(slots: dict[str, dict[str, Any]]) -> str:
    parts = []
    for slot, info in slots.items():
        if info["state"] == "empty":
            parts.append(f"{slot} empty")
        else:
            what = f"{info.get('image')} {info.get('version')}, built {info.get('built')}"
            parts.append(f"{slot} {info['state']} ({what})")
    return ", ".join(parts)


def booted() -> str:
    """The slot this boot came from (a, b), or "live"."""
    return files.read_text(layout.RUN_SLOT, "live").strip()


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def build_info(slot: str, medium: str | None = None) -> dict[str, Any]:
    return files.read_json(os.path.join((medium or layout.RUN_MEDIUM) + layout.slot_dir(slot), BUILD_INFO))


def device(slot: str, sys_block: str = "/sys/class/block", medium_device: str | None = None) -> str:
    """The slot's partition: by its GPT name, or on an MBR disk by number beside the boot partition."""
    names = sorted(os.listdir(sys_block)) if os.path.isdir(sys_block) else []
    for name in names:
        uevent = files.read_text(f"{sys_block}/{name}/uevent").strip()
        if f"PARTNAME={layout.SLOT_LABELS[slot]}" in uevent.splitlines():
            return f"/dev/{name}"
    medium_device = medium_device or files.read_text(layout.RUN_MEDIUM_DEVICE).strip()
    if medium_device:
        disk = os.path.basename(os.path.realpath(f"{sys_block}/{os.path.basename(medium_device)}/.."))
        for name in names:
            if files.read_text(f"{sys_block}/{disk}/{name}/partition").strip() == str(layout.SLOT_NUMBERS[slot]):
                return f"/dev/{name}"
    raise OSError(f"no partition for slot {slot} ({layout.SLOT_LABELS[slot]}) on this node")


def size_bytes(dev: str, sys_block: str = "/sys/class/block") -> int:
    return int(files.read_text(f"{sys_block}/{os.path.basename(dev)}/size", "0").strip() or 0) * 512


class writable_boot:
    """The boot partition (mounted read-only at boot) made writable for the block's duration."""

    def __init__(self, medium: str = layout.RUN_MEDIUM):
        self.medium = medium

    def _remount(self, mode: str) -> None:
        import subprocess
        proc = subprocess.run(["mount", "-o", f"remount,{mode}", self.medium], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"cannot remount the boot partition {mode}: {proc.stderr.strip()}")

    def __enter__(self) -> str:
        self._remount("rw")
        return self.medium

    def __exit__(self, *exc: object) -> None:
        os.sync()
        self._remount("ro")


def load_state(path: str | None = None) -> dict[str, Any]:
    """The upgrade record on the state partition: ``committed`` (each slot's version that passed
    its gate), ``failed`` versions with their reasons, ``last`` (the last result) and ``history``."""
    return files.read_json(path or layout.UPGRADE_STATE)


def save_state(state: dict[str, Any], path: str | None = None) -> None:
    files.write_json(path or layout.UPGRADE_STATE, state, makedirs=True, indent=1, sort_keys=True)


def record(event: dict[str, Any], failed_reason: str | None = None, path: str | None = None) -> None:
    """Set the last upgrade result (and, with ``failed_reason``, mark its version failed)."""
    import time
    state = load_state(path)
    event = {**event, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if failed_reason is not None:
        event["reason"] = failed_reason
        state.setdefault("failed", {})[str(event.get("version"))] = {
            "reason": failed_reason, "image": event.get("image"), "at": event["at"]}
    state["last"] = event
    state["history"] = ([*state.get("history", []), event])[-20:]
    save_state(state, path)
