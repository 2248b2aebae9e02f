"""Kernel arguments that steer the boot, and the boot path's cheap "is there config?" test.
Imports only os: it runs before anything else on every boot."""

from __future__ import annotations

import os

BAKED = "/run/basalt/medium/basalt/config.yaml"
# basalt.* arguments read by the initramfs and init, not config keys.
CONTROL = frozenset({"label", "root", "mode", "wait", "rescue", "console", "debug"})


def has_config(cmdline: str, baked: str = BAKED) -> bool:
    """Is there any config to load at all (a baked file or config keys on the command line)?"""
    if os.path.isfile(baked):
        return True
    for arg in cmdline.split():
        prefix, _, rest = arg.partition(".")
        if prefix in ("basalt", "k3os") and rest and rest.split("=")[0].split(".")[0] not in CONTROL:
            return True
    return False
