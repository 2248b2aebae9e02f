"""Kernel arguments that steer the boot, and the boot path's cheap "is there config?" test.
Imports only os: it runs before anything else on every boot."""

from __future__ import annotations

import os

from agent import layout

BAKED = layout.RUN_MEDIUM + layout.MEDIUM_CONFIG
SCHEMA_PATHS = (layout.LIB_SCHEMA,  # on a node; in the source tree, the repository's config/
                os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "../../config/config.schema.json")))
# basalt.* arguments read by the initramfs and init, not config keys.
CONTROL = frozenset({"label", "state", "root", "mode", "slot", "wait", "rescue", "console", "debug", "trial"})
# Where config may come from besides the command line (see sources.py and datasources.py).
PLACES = (BAKED, layout.RUN_SITE_CONFIG, layout.STATE_CONFIG, layout.STATE_CONFIG_D, layout.KNOWN_GOOD,
          layout.RUN_NOCLOUD,
          layout.HTTP_DATASOURCE, layout.RUN_MEDIUM + layout.MEDIUM_SITE_CONFIG,
          *(layout.RUN_MEDIUM + name for name in layout.MEDIUM_NOCLOUD))


def is_datasource_url(arg: str) -> bool:
    """``basalt.datasource=http(s)://...``: the HTTP datasource, not a config key (k3OS's
    ``k3os.datasource=cdrom`` still means ``data_sources``)."""
    return arg.startswith(("basalt.datasource=http://", "basalt.datasource=https://"))


def datasource_url(cmdline: str) -> str | None:
    return next((arg.partition("=")[2] for arg in cmdline.split() if is_datasource_url(arg)), None)


def has_config(cmdline: str, baked: str = BAKED, places: tuple[str, ...] = PLACES[1:]) -> bool:
    """Is there any config to load at all (a file in one of its places, or config keys on the
    command line)?"""
    return os.path.isfile(baked) or any(os.path.exists(p) for p in places) or has_config_args(cmdline) or \
        datasource_url(cmdline) is not None


def has_config_args(cmdline: str) -> bool:
    """Config keys on the command line (``basalt.hostname=x``), not just boot control arguments."""
    for arg in cmdline.split():
        prefix, _, rest = arg.partition(".")
        if prefix in ("basalt", "k3os") and rest and rest.split("=")[0].split(".")[0] not in CONTROL \
                and not is_datasource_url(arg):
            return True
    return False
