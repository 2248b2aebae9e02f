"""The A/B slots of an installed disk, as the boot partition describes them: each slot's
``build.json`` (version, image, build time) beside its kernel, and which slot this boot came from."""

from __future__ import annotations

import json
import os
from typing import Any

from agent import layout

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
            with open(os.path.join(medium + layout.slot_dir(slot), BUILD_INFO)) as f:
                info = json.load(f)
        except (OSError, ValueError):
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
