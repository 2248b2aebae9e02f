"""initramfs: busybox, the boot modules and /init, as a deterministic cpio.

The modules listed in the image definition are loaded in dependency order
(from the rootfs's modules.dep); /init finds the boot medium by label,
mounts the squashfs read-only and switches root to the agent.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

from agent import layout
from agent.errors import BasaltError, Problem
from builder import host
from builder.media import cpio
from builder.stages import StageContext

NAME = "initramfs"
VERSION = 1
SOURCES = ("builder/media/cpio.py", "agent/layout.py")
VOLATILE = False
INPUTS = ("rootfs",)
PUBLISH = (("initrd.img", "initrd.img"),)
TOOLS = {"zstd": "zstd", "lz4": "lz4"}
INIT = Path(__file__).resolve().parent.parent / "initramfs" / "init"
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["modules", "compression", "readahead", "init_digest", "source_date_epoch"],
    "properties": {
        "modules": {"type": "array", "items": {"type": "string"}},
        "compression": {"enum": ["lz4", "gzip", "zstd"]},
        "readahead": {"type": "boolean"},
        "init_digest": {"type": "string"},
        "source_date_epoch": {"type": "integer"},
    },
}


def _deps(modules_dir: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
    return deps, by_name


def module_order(modules_dir: Path, wanted: list[str],
                 groups: list[tuple[str, str, list[str], list[str]]] | None = None) -> list[str]:
    """Module files (relative to modules_dir) to insmod, dependencies first (``groups``: the
    module_groups of ``wanted``, when already made)."""
    order: list[str] = []
    for _, _, files, _ in groups if groups is not None else module_groups(modules_dir, wanted):
        order += [f for f in files if f not in order]
    return order


# Buses whose devices are there when /init starts (or appear as their controller's driver
# probes): a driver for them is loaded only when a device present wants it. Buses under a
# controller (USB, SCSI, MMC): their drivers load once the bus exists (their devices come later).
DEVICE_BUSES = ("pci", "virtio", "of", "acpi", "platform", "amba", "vmbus", "xen")
CHILD_BUSES = ("usb", "scsi", "mmc", "sdio")
# The module whose loading makes each such bus exist (the guard names it: ``bus:scsi=scsi_mod.ko``).
BUS_CORE = {"usb": "usbcore", "scsi": "scsi_mod", "mmc": "mmc_core", "sdio": "mmc_core"}


# Modules a file system's mount asks the kernel for by name (no modinfo dependency says so), so
# they load with that file system (fs:TYPE) rather than at every boot: the code pages vfat names
# files with (its defaults: codepage 437, iocharset ascii) and the checksum ext4 checks its
# metadata with. The initramfs has no modprobe for the kernel to call; after switch_root the
# kernel loads them itself for a later mount.
FS_HELPERS = {"nls_cp437": ("vfat",), "nls_ascii": ("vfat",), "crc32c_generic": ("ext4",)}

# The module list's order ($modlist): what is loaded without asking first, then drivers for present devices,
# then drivers for their buses (one pass loads a controller, then the disk driver on its bus).
GUARD_ORDER = {"always": 0, "match": 1, "bus": 2, "fs": 3}


def module_groups(modules_dir: Path, wanted: list[str]) -> list[tuple[str, str, list[str], list[str]]]:
    """For each wanted module: (name, guard, its files dependencies first, the modalias patterns it
    serves), in GUARD_ORDER. ``guard``: ``always`` (no device of its own: loop), ``match`` (a
    present device must want it), ``bus:NAME=CORE.ko`` (load once /sys/bus/NAME exists or a pass
    loads CORE.ko, which makes it), or ``fs:TYPE,...`` (a file system, or what its mount asks the
    kernel for, FS_HELPERS: loaded just before a mount of one of its types)."""
    deps, by_name = _deps(modules_dir)
    aliases: dict[str, list[str]] = {}
    alias_file = modules_dir / "modules.alias"
    for line in alias_file.read_text().splitlines() if alias_file.exists() else []:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            aliases.setdefault(parts[2], []).append(parts[1])
    groups = []

    def visit(path: str, files: list[str]) -> None:
        if path in files:
            return
        for dep in deps.get(path, []):
            visit(dep, files)
        files.append(path)

    builtin = (modules_dir / "modules.builtin").read_text() if (modules_dir / "modules.builtin").exists() else ""
    builtin_names = {Path(p).name.split(".ko")[0].replace("-", "_") for p in builtin.split()}
    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            files: list[str] = []
            visit(by_name[key], files)
            own = aliases.get(key, [])
            device = [a for a in own if a.split(":", 1)[0].rstrip("*") in DEVICE_BUSES]
            child = [b for b in CHILD_BUSES if any(a.split(":", 1)[0].rstrip("*") == b for a in own)]
            types = sorted(a.removeprefix("fs-") for a in own if a.startswith("fs-")) or list(FS_HELPERS.get(key, ()))
            core = [Path(f).name for f in files if Path(f).name.split(".ko")[0] == BUS_CORE[child[0]]] if child else []
            guard = "match" if device else f"bus:{child[0]}={''.join(core[:1])}" if child else \
                f"fs:{','.join(types)}" if types else "always"
            groups.append((key, guard, files, device))
        elif key not in builtin_names:
            raise BasaltError(Problem(f"initramfs module '{name}' is neither a module nor built into the kernel",
                                      hint="check kernel.initramfs.modules, and that kernel.modules.exclude "
                                           "does not drop it"))
    return sorted(groups, key=lambda g: GUARD_ORDER[g[1].partition(":")[0]])


def modmatch(groups: list[tuple[str, str, list[str], list[str]]]) -> str:
    """The shell function ``match ALIAS``: adds to $wanted each module whose patterns take ALIAS.
    Patterns are tried only against aliases of their own bus (most devices — ACPI, platform, CPU —
    want nothing here and pass one ``case`` on their way out)."""
    by_bus: dict[str, list[tuple[str, list[str]]]] = {}
    for name, guard, _, patterns in groups:
        if guard != "match":
            continue
        buses: dict[str, list[str]] = {}
        for p in patterns:
            bus = p.split(":", 1)[0]
            buses.setdefault("*" if any(w in bus for w in "*?[") else bus, []).append(p)
        for bus, mine in buses.items():
            by_bus.setdefault(bus, []).append((name, mine))

    def cases(entries: list[tuple[str, list[str]]], indent: str) -> list[str]:
        return [f'{indent}case "$1" in {shell_patterns(pats)}) wanted="${{wanted}}{name} " ;; esac'
                for name, pats in entries]

    lines = cases(by_bus.pop("*", []), "\t")
    if by_bus:
        lines.append('\tcase "$1" in')
        for bus in sorted(by_bus):
            shell_patterns([bus])
            lines += [f"\t{bus}:*)", *cases(by_bus[bus], "\t\t"), "\t\t;;"]
        lines.append("\tesac")
    return "match() {\n\t:\n" + "\n".join(lines) + "\n}\n"


def fsmods(groups: list[tuple[str, str, list[str], list[str]]]) -> str:
    """The shell function ``fs_modules TYPE...``: sets $fs to the modules of these file systems,
    each type's groups in the module list's order (what a mount of it asks the kernel for with them).
    Written out here, /init neither reads the module list again nor starts a subshell for it."""
    by_type: dict[str, list[str]] = {}
    for _, guard, files, _ in groups:
        if not guard.startswith("fs:"):
            continue
        for fstype in guard.removeprefix("fs:").split(","):
            if not fstype.replace("_", "").isalnum() or not fstype.isascii():
                raise BasaltError(Problem(f"file system type {fstype!r} cannot be a shell word",
                                          hint="a kernel module with an unusual fs- alias: leave it out of "
                                               "kernel.initramfs.modules"))
            by_type.setdefault(fstype, []).extend(Path(f).name for f in files)
    lines = [f'\t\t{fstype}) fs="$fs {" ".join(mods)}" ;;' for fstype, mods in sorted(by_type.items())]
    body = "\t\tcase $type in\n" + "\n".join(lines) + "\n\t\tesac\n" if lines else "\t\t:\n"
    return "fs_modules() {\n\tfs=\n\tfor type in \"$@\"; do\n" + body + "\tdone\n}\n"


# What a word of the module list may hold: module and file names, and guards (bus:scsi=scsi_mod.ko, fs:ext2,ext4)
LIST_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:=+")


def modlist(groups: list[tuple[str, str, list[str], list[str]]]) -> str:
    """The shell variable ``modlist``: a line per group, NAME GUARD FILE... (dependencies first), the
    list each of /init's passes goes through. A variable, not a file /init reads: busybox ``read``
    takes a byte per system call (0.11 s of a Pi's first pass, 0.08 s of its second)."""
    lines = []
    for name, guard, files, _ in groups:
        words = [name, guard, *(Path(f).name for f in files)]
        for word in words:
            if not word or not set(word) <= LIST_WORD:
                raise BasaltError(Problem(f"initramfs module list: {word!r} (of {name!r}) cannot be a shell word",
                                          hint="a kernel module with an unusual name: leave it out of "
                                               "kernel.initramfs.modules"))
        lines.append(" ".join(words))
    return "modlist='" + "\n".join(lines) + "'\n"


def shell_patterns(patterns: list[str]) -> str:
    """modalias patterns as one shell ``case`` pattern list (fnmatch's rules are the shell's)."""
    for p in patterns:
        if any(c in p for c in " |;&()<>\"$`'\n"):
            raise BasaltError(Problem(f"modalias pattern {p!r} cannot be a shell pattern", hint="a kernel module "
                                      "with an unusual alias: leave it out of kernel.initramfs.modules"))
    return "|".join(patterns)


def entries(rootfs: Path, options: dict[str, Any]) -> list[cpio.Entry]:
    t = options["source_date_epoch"]
    release = next((rootfs / "usr/lib/modules").iterdir()).name
    mdir = rootfs / "usr/lib/modules" / release
    out = [cpio.directory(d, mtime=t) for d in ("bin", "dev", "proc", "sys", "run", "tmp", "medium",
                                                 "newroot", "lib", "lib/modules", "etc")]
    out += [cpio.chardev("dev/console", 5, 1, mtime=t), cpio.chardev("dev/null", 1, 3, 0o666, mtime=t),
            cpio.chardev("dev/kmsg", 1, 11, 0o644, mtime=t)]
    out.append(cpio.file("bin/busybox", (rootfs / "usr/bin/busybox").read_bytes(), 0o755, t))
    out.append(cpio.symlink("bin/sh", "busybox", t))
    out.append(cpio.file("init", INIT.read_bytes(), 0o755, t))
    out.append(cpio.file("etc/layout.sh", layout.shell().encode(), 0o644, t))  # the on-device layout contract
    # the image's choices for /init (kernel.initramfs in the image definition)
    out.append(cpio.file("etc/options.sh", f"read_ahead='{'1' if options['readahead'] else ''}'\n".encode(), 0o644, t))
    groups = module_groups(mdir, options["modules"])
    for rel in module_order(mdir, options["modules"], groups):
        out.append(cpio.file(f"lib/modules/{Path(rel).name}", (mdir / rel).read_bytes(), 0o644, t))
    # /etc/modmatch.sh: $modlist, the module list (NAME GUARD FILE..., dependencies first); match
    # ALIAS adds the names of the modules a device wants to $wanted (builder/initramfs/init loads
    # by them), and fs_modules TYPE... sets $fs to a file system's.
    out.append(cpio.file("etc/modmatch.sh", (modlist(groups) + modmatch(groups) + fsmods(groups)).encode(), 0o644, t))
    return out


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    raw = io.BytesIO()
    cpio.write(raw, entries(ctx.input("rootfs") / "root", options))
    dest = ctx.out / "initrd.img"
    if options["compression"] == "gzip":
        dest.write_bytes(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0))
    elif options["compression"] == "lz4":  # the kernel reads lz4's legacy format (-l) only
        dest.write_bytes(host.run(["lz4", "-l", "-9", "-q", "-c"], "lz4", input=raw.getvalue()).stdout)
    else:
        dest.write_bytes(host.run(["zstd", "-19", "-q", "-c"], "zstd", input=raw.getvalue()).stdout)
