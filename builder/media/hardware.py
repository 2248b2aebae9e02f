"""Kernel modules per hardware class (``kernel.modules.profile``): which of a kernel's modules an
image keeps, decided from data — the class's file in images/hardware/ (the kinds of drivers its
machines use, the devices they have, the device trees of its boards) and the kernel's own
modalias and dependency tables.

A module is kept when it is not a device driver (everything outside kernel/drivers and
kernel/sound: file systems, network protocols, netfilter, crypto, libraries), when it is one of
the class's drivers, when one of the class's devices (a modalias, or a compatible string of one
of its device trees) wants it, or when a kept module needs it. ``all`` keeps every module.
"""

from __future__ import annotations

import fnmatch
import struct
from pathlib import Path
from typing import Any

import yaml

from agent.errors import BasaltError, Problem
from agent.pid1 import modalias
from builder.imagedef import ROOT

HARDWARE = ROOT / "images" / "hardware"
ALL = "all"


def names() -> list[str]:
    return [ALL, *sorted(p.stem for p in HARDWARE.glob("*.yaml"))]


def load(name: str) -> dict[str, Any]:
    """A class's data with what it includes merged in (drivers, devices, dtbs, except); ``all``: empty."""
    if name == ALL:
        return {"name": ALL, "drivers": [], "devices": [], "dtbs": [], "except": []}
    path = HARDWARE / f"{name}.yaml"
    if not path.is_file():
        raise BasaltError(Problem(f"kernel.modules.profile: no hardware class {name!r}",
                                  hint=f"one of: {', '.join(names())} (images/hardware/)"))
    data = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {"name": name, "drivers": [], "devices": [], "dtbs": [], "except": []}
    for included in data.get("includes", []):
        for key, values in load(included).items():
            if key != "name":
                out[key] += [v for v in values if v not in out[key]]
    for key in ("drivers", "devices", "dtbs", "except"):
        out[key] += [v for v in data.get(key, []) if v not in out[key]]
    return out


def dtb_compatibles(blob: bytes) -> set[str]:
    """Every ``compatible`` string of a flattened device tree (the boards' .dtb files)."""
    magic, _, off_struct, off_strings = struct.unpack_from(">IIII", blob)
    if magic != 0xD00DFEED:
        raise ValueError("not a device tree blob")
    out: set[str] = set()
    pos = off_struct
    while pos + 4 <= len(blob):
        token, = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == 1:  # FDT_BEGIN_NODE: a NUL-terminated name, padded to 4
            end = blob.index(b"\0", pos)
            pos = (end + 4) & ~3
        elif token == 3:  # FDT_PROP: length, name offset, value
            length, name_off = struct.unpack_from(">II", blob, pos)
            pos += 8
            name = blob[off_strings + name_off:blob.index(b"\0", off_strings + name_off)]
            if name == b"compatible":
                out |= {s.decode("ascii", "replace") for s in blob[pos:pos + length].split(b"\0") if s}
            pos = (pos + length + 3) & ~3
        elif token == 9:  # FDT_END
            break
    return out


def devices(profile: dict[str, Any], dtbs: Path | None) -> list[str]:
    """The class's devices as modaliases: its list, and each compatible of its boards' device trees
    (as the kernel writes them for a platform device: of:N…T…C<compatible>)."""
    out = list(profile["devices"])
    if dtbs is not None:
        for pattern in profile["dtbs"]:
            for path in sorted(dtbs.glob(pattern)):
                out += [f"of:NnodeT(null)C{c}" for c in sorted(dtb_compatibles(path.read_bytes()))]
    return out


def is_driver(rel: str) -> bool:
    return rel.startswith(("kernel/drivers/", "kernel/sound/"))


def matches(rel: str, patterns: list[str]) -> bool:
    """Whether a module's path is one of ``patterns``: a directory (ending in /) holds it at any
    depth, a file pattern names it; a wildcard never crosses a /."""
    parts = rel.split("/")
    for pattern in patterns:
        want = pattern.rstrip("/").split("/")
        if len(parts) < len(want) or (not pattern.endswith("/") and len(parts) != len(want)):
            continue
        if all(fnmatch.fnmatchcase(part, w) for part, w in zip(parts, want, strict=False)):
            return True
    return False


def select(profile: dict[str, Any], aliases: str, deps: str, wanted: list[str],
           dtbs: Path | None = None) -> set[str]:
    """The module files (paths as modules.dep writes them) the class keeps, from the kernel's
    whole ``modules.alias`` and ``modules.dep``; ``wanted``: module names kept whatever the class
    (the initramfs's, kernel.modules.keep)."""
    paths = {}
    needs: dict[str, list[str]] = {}
    for line in deps.splitlines():
        if ":" in line:
            path, _, rest = line.partition(":")
            paths[modalias.module_name(path)] = path
            needs[path] = rest.split()
    if profile["name"] == ALL:
        return set(needs)
    early, late = modalias.resolve(index_of(aliases, deps), devices(profile, dtbs))
    by_device = {*early, *late}
    wanted_names = {w.replace("-", "_") for w in wanted}
    keep = {path for name, path in paths.items() if name in wanted_names or name in by_device
            or (matches(path, profile["drivers"]) and not matches(path, profile["except"]))}
    todo = list(keep)
    while todo:  # what a kept module needs is kept
        for dep in needs.get(todo.pop(), []):
            if dep not in keep:
                keep.add(dep)
                todo.append(dep)
    return keep


def watchdog_makers(release: Path, aliases: str, deps: str) -> tuple[str, ...]:
    """The modules of the tree at ``release`` that make a watchdog driver's device: those whose
    file names one of the drivers' platform devices (modalias.watchdog_devices), either spelling
    — an Intel chipset's TCO timer, ``iTCO_wdt``, is made by lpc_ich, intel_pmc_bxt or the SMBus
    driver i2c_i801. Modules compressed in a way the standard library cannot read (zstd) name
    nothing: their watchdog is armed after ready, when its driver comes."""
    import gzip
    import lzma
    names = {p.removeprefix("platform:") for p, _ in modalias.watchdog_devices(aliases, deps)
             if not any(w in p for w in "*?[")}
    needles = {b"\0" + v.encode() + b"\0" for n in names for v in (n, n.replace("_", "-"))}
    makers = []
    for line in deps.splitlines():
        path = line.split(":", 1)[0]
        if not path or path.startswith("kernel/drivers/watchdog/"):
            continue
        data = (release / path).read_bytes()
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.endswith(".gz"):
            data = gzip.decompress(data)
        if any(needle in data for needle in needles):
            makers.append(modalias.module_name(path))
    return tuple(sorted(makers))


def index_of(aliases: str, deps: str) -> modalias.Index:
    index = modalias.parse(modalias.build(aliases, deps))
    if index is None:  # the index's offsets are little-endian, read in the machine's order
        raise BasaltError(Problem("the driver index cannot be read on this build host (big-endian)",
                                  hint="build on a little-endian machine (x86_64, arm64)"))
    return index
