"""The stamped site config (``inv configure``, ``inv fleet build``; builder/fleet/stamp.py): which of the
configs on the boot medium is this node's.

``/basalt/site.json`` on the medium holds a default config and any number of per-device ones, each
with the MAC addresses and serial numbers of its devices. At boot the first device entry that
names a MAC address of any interface (``/sys/class/net/*/address``) or the board's serial number
(the device tree's ``serial-number``, or DMI's product serial) is chosen; nothing matching, the
default; no default, none. The chosen config is written to ``/run/basalt/site/config.yaml``
(mode 0600: it may hold a join token or a Wi-Fi passphrase), where ``sources.gather`` reads it
between the baked config and the state partition's, and the match to ``match.json`` beside it
for ``basalt status``.

On an ISO the file is a fixed-size reservation, NUL-padded; an unstamped one is all NULs.
"""

from __future__ import annotations

import os

from agent import files, layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1
NET = "/sys/class/net"
SERIALS = ("/proc/device-tree/serial-number", "/sys/firmware/devicetree/base/serial-number",
           "/sys/class/dmi/id/product_serial")


def load(medium: str = layout.RUN_MEDIUM) -> dict[str, Any] | None:
    """The medium's site index, or None when it has none (or an empty reservation)."""
    data = b""
    try:  # the index, then NUL padding to the reservation's end: read up to the first NUL only
        with open(medium + layout.MEDIUM_SITE, "rb") as f:
            while chunk := f.read(1 << 16):
                data += chunk.split(b"\0", 1)[0]
                if b"\0" in chunk:
                    break
    except OSError:
        return None
    data = data.strip()
    if not data:
        return None
    from agent import jsontext
    try:
        index = jsontext.loads(data)
    except ValueError as exc:
        raise ValueError(f"{layout.MEDIUM_SITE} on the boot medium is not JSON ({exc}): restamp it with "
                         "'inv configure'") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{layout.MEDIUM_SITE} on the boot medium is not a format-{FORMAT} site index: "
                         "restamp it with this version's 'inv configure'")
    return index


def needs_identity(index: dict[str, Any] | None) -> bool:
    """Per-device configs: choosing one needs the network drivers loaded first (for the MACs)."""
    return bool(index and index.get("devices"))


def normal_mac(text: str) -> str:
    return text.strip().lower().replace("-", ":")


def normal_serial(text: str) -> str:
    return text.strip().strip("\0").strip().lower()


def identity(net: str = NET, serials: tuple[str, ...] = SERIALS) -> tuple[dict[str, str], list[str]]:
    """This machine's MAC addresses (address -> interface; loopback and all-zero ones left out) and
    board serial numbers."""
    macs: dict[str, str] = {}
    for name in sorted(os.listdir(net)) if os.path.isdir(net) else []:
        try:
            with open(f"{net}/{name}/address") as f:
                mac = normal_mac(f.read())
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            macs.setdefault(mac, name)
    found = []
    for path in serials:
        try:
            with open(path, "rb") as f:
                value = normal_serial(f.read().decode(errors="replace"))
        except OSError:
            continue
        if value and value not in found:
            found.append(value)
    return macs, found


def choose(index: dict[str, Any], macs: dict[str, str],
           serials: list[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the entry whose config to use, the match as reported)."""
    for entry in index.get("devices") or []:
        for mac in entry.get("macs") or []:
            if normal_mac(mac) in macs:
                return entry, {"site": entry.get("name"), "by": "mac", "value": normal_mac(mac),
                               "interface": macs[normal_mac(mac)]}
        for serial in entry.get("serials") or []:
            if normal_serial(serial) in serials:
                return entry, {"site": entry.get("name"), "by": "serial", "value": normal_serial(serial)}
    default = index.get("default")
    if isinstance(default, dict):
        return default, {"site": default.get("name"), "by": "default" if index.get("devices") else "stamped",
                         "macs": sorted(macs), "serials": serials}
    return None, {"site": None, "by": "no device matched and there is no default", "macs": sorted(macs),
                  "serials": serials}


def select(index: dict[str, Any] | None, out: str = layout.RUN_SITE, net: str = NET,
           serials: tuple[str, ...] = SERIALS) -> dict[str, Any] | None:
    """Write the chosen config (or remove a stale one); returns the match, None when unstamped."""
    config, match_path = f"{out}/config.yaml", f"{out}/match.json"
    sidecar = f"{out}/config.bin"  # the config precompiled by the stamp (sources.precompiled checks its key)
    for stale in (config, sidecar, match_path):
        if os.path.exists(stale):
            os.unlink(stale)
    if index is None:
        return None
    macs, found = identity(net, serials)
    import time
    for _ in range(30 if needs_identity(index) and not macs else 0):  # a NIC's probe may lag its driver's load
        time.sleep(0.1)
        macs, found = identity(net, serials)
        if macs:
            break
    entry, match = choose(index, macs, found)
    os.makedirs(out, mode=0o700, exist_ok=True)
    if entry is not None:
        text = entry.get("config")
        if not isinstance(text, str):
            raise ValueError(f"{layout.MEDIUM_SITE}: site {entry.get('name')!r} has no config text")
        files.write_atomic(config, text, 0o600)
        compiled = entry.get("compiled")
        if isinstance(compiled, str):
            import binascii
            try:
                files.write_atomic(sidecar, binascii.a2b_base64(compiled), 0o600)
            except (binascii.Error, ValueError):
                pass  # not base64: the YAML is parsed and checked as usual
    from agent import jsontext
    files.write_atomic(match_path, jsontext.dumps(match))
    return match




def describe(match: dict[str, Any] | None) -> str:
    """One line for ``basalt status``."""
    if not match:
        return "none stamped"
    if match.get("site") is None:
        return f"none ({match.get('by')}; MACs {', '.join(match.get('macs') or []) or 'none'})"
    by = match.get("by")
    if by == "mac":
        return f"{match['site']} (MAC {match['value']} on {match.get('interface')})"
    if by == "serial":
        return f"{match['site']} (serial {match['value']})"
    if by == "default":
        return f"{match['site']} (the default: no device matched MACs {', '.join(match.get('macs') or []) or 'none'})"
    return f"{match['site']} (stamped)"
