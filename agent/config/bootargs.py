"""The kernel command line, parsed in one place: its arguments (``parse``, ``values``), the ones
that steer the boot (``CONTROL``), the ones that are config keys (``config_args``, read into
config by agent/config/sources.py), the HTTP datasource; and the boot path's cheap "is there
config?" test. Imports only os: it runs before anything else on every boot."""

from __future__ import annotations

import os

from agent import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

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


def parse(cmdline: str) -> dict[str, str]:
    """Kernel arguments by name (the first of a repeated one; ``console=`` may repeat, so its
    values are joined with spaces); a bare word maps to ''."""
    out: dict[str, str] = {}
    for arg in cmdline.split():
        key, _, value = arg.partition("=")
        if key == "console":
            out[key] = (out.get(key, "") + " " + value).strip()
        else:
            out.setdefault(key, value)
    return out


def values(cmdline: str, *keys: str) -> list[str]:
    """Every value given to any of ``keys``, in order."""
    return [arg.partition("=")[2] for arg in cmdline.split() if arg.partition("=")[0] in keys]


def config_args(cmdline: str) -> Iterator[tuple[str, list[str], str | None]]:
    """The arguments that are config keys (``basalt.hostname=x``, ``k3os.ntp_servers=a``):
    (prefix, the key's parts, the value or None for a bare key); not boot control arguments
    (``CONTROL``) nor the HTTP datasource."""
    for arg in cmdline.split():
        prefix, dot, rest = arg.partition(".")
        if prefix not in ("basalt", "k3os") or not dot or not rest or is_datasource_url(arg):
            continue
        key, eq, value = rest.partition("=")
        parts = key.split(".")
        if parts[0] in CONTROL or not all(parts):
            continue
        yield prefix, parts, value if eq else None


def is_datasource_url(arg: str) -> bool:
    """``basalt.datasource=http(s)://...``: the HTTP datasource, not a config key (k3OS's
    ``k3os.datasource=cdrom`` still means ``data_sources``)."""
    return arg.startswith(("basalt.datasource=http://", "basalt.datasource=https://"))


def datasource_url(cmdline: str) -> str | None:
    return next((v for v in values(cmdline, "basalt.datasource") if v.startswith(("http://", "https://"))), None)


def has_config(cmdline: str, baked: str = BAKED, places: tuple[str, ...] = PLACES[1:]) -> bool:
    """Is there any config to load at all (a file in one of its places, or config keys on the
    command line)?"""
    return os.path.isfile(baked) or any(os.path.exists(p) for p in places) or has_config_args(cmdline) or \
        datasource_url(cmdline) is not None


def has_config_args(cmdline: str) -> bool:
    """Config keys on the command line (``basalt.hostname=x``), not just boot control arguments."""
    return next(config_args(cmdline), None) is not None
