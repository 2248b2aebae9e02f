"""squashfs: pack the rootfs tree into the read-only root image."""

from __future__ import annotations

import os
from typing import Any

from builder import host
from builder.stages import StageContext

NAME = "squashfs"
VERSION = 1
VOLATILE = False
INPUTS = ("rootfs",)
PUBLISH = (("rootfs.squashfs", "rootfs.squashfs"),)
TOOLS = {"mksquashfs": "squashfs-tools"}
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["compression", "level", "block_size_kb", "source_date_epoch"],
    "properties": {
        "compression": {"enum": ["zstd", "xz", "gzip", "lz4"]},
        "level": {"type": "integer", "minimum": 1, "maximum": 22},
        "block_size_kb": {"enum": [128, 256, 512, 1024]},
        "source_date_epoch": {"type": "integer"},
    },
}


def command(src: str, dest: str, options: dict[str, Any]) -> list[str]:
    argv = ["mksquashfs", src, dest, "-noappend", "-no-progress", "-quiet",
            "-comp", options["compression"], "-b", f"{options['block_size_kb']}K",
            "-mkfs-time", str(options["source_date_epoch"]), "-all-time", str(options["source_date_epoch"]),
            "-processors", str(os.cpu_count() or 1)]
    if options["compression"] in ("zstd", "gzip"):
        argv += ["-Xcompression-level", str(min(options["level"], 9 if options["compression"] == "gzip" else 22))]
    return argv


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    dest = ctx.out / "rootfs.squashfs"
    host.run(command(str(ctx.input("rootfs") / "root"), str(dest), options), "mksquashfs",
             hint="is there enough free space in the cache directory?")
