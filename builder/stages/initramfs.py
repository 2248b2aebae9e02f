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
TOOLS = {"zstd": "zstd"}
INIT = Path(__file__).resolve().parent.parent / "initramfs" / "init"
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["modules", "compression", "init_digest", "source_date_epoch"],
    "properties": {
        "modules": {"type": "array", "items": {"type": "string"}},
        "compression": {"enum": ["gzip", "zstd"]},
        "init_digest": {"type": "string"},
        "source_date_epoch": {"type": "integer"},
    },
}


def module_order(modules_dir: Path, wanted: list[str]) -> list[str]:
    """Module files (relative to modules_dir) to insmod, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    builtin = (modules_dir / "modules.builtin").read_text() if (modules_dir / "modules.builtin").exists() else ""
    builtin_names = {Path(p).name.split(".ko")[0].replace("-", "_") for p in builtin.split()}
    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin_names:
            raise BasaltError(Problem(f"initramfs module '{name}' is neither a module nor built into the kernel",
                                      hint="check kernel.initramfs.modules, and that kernel.modules.exclude "
                                           "does not drop it"))
    return order


def entries(rootfs: Path, options: dict[str, Any]) -> list[cpio.Entry]:
    t = options["source_date_epoch"]
    release = next((rootfs / "usr/lib/modules").iterdir()).name
    mdir = rootfs / "usr/lib/modules" / release
    order = module_order(mdir, options["modules"])
    out = [cpio.directory(d, mtime=t) for d in ("bin", "dev", "proc", "sys", "run", "tmp", "medium",
                                                 "newroot", "lib", "lib/modules", "etc")]
    out += [cpio.chardev("dev/console", 5, 1, mtime=t), cpio.chardev("dev/null", 1, 3, 0o666, mtime=t),
            cpio.chardev("dev/kmsg", 1, 11, 0o644, mtime=t)]
    out.append(cpio.file("bin/busybox", (rootfs / "usr/bin/busybox").read_bytes(), 0o755, t))
    out.append(cpio.symlink("bin/sh", "busybox", t))
    out.append(cpio.file("init", INIT.read_bytes(), 0o755, t))
    out.append(cpio.file("etc/layout.sh", layout.shell().encode(), 0o644, t))  # the on-device layout contract
    load = []
    for rel in order:
        name = Path(rel).name
        out.append(cpio.file(f"lib/modules/{name}", (mdir / rel).read_bytes(), 0o644, t))
        load.append(name)
    out.append(cpio.file("etc/modules", ("\n".join(load) + "\n").encode(), 0o644, t))
    return out


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    raw = io.BytesIO()
    cpio.write(raw, entries(ctx.input("rootfs") / "root", options))
    dest = ctx.out / "initrd.img"
    if options["compression"] == "gzip":
        dest.write_bytes(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0))
    else:
        dest.write_bytes(host.run(["zstd", "-19", "-q", "-c"], "zstd", input=raw.getvalue()).stdout)
