"""raw: an A/B disk image (GPT) that boots by BIOS and UEFI, for flashing or installing.

Partitions (agent/layout.py names them): a BIOS boot partition holding GRUB's i386-pc core image
(embedded as grub-bios-setup would), the boot partition (an ESP, FAT, label BASALT_BOOT: GRUB for
UEFI, the menu and its environment block, each slot's kernel and initramfs, the site config),
slot A (this build's squashfs, written raw), slot B (empty, for the next upgrade) and the state
partition (ext4, BASALT_STATE; grown to the disk by the node). The image file is sparse; with
``qcow2: true`` a qcow2 copy is published too.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from agent import layout, slots
from agent.errors import BasaltError, Problem
from builder import disk, grub, medium, progress
from builder.arch import Architecture

NAME = "raw"
VERSION = 1
SOURCES = ("builder/templates/grub-disk.cfg.j2", "builder/grub.py", "builder/disk.py", "builder/medium.py",
           "agent/layout.py", "agent/slots.py")
VOLATILE = False
INPUTS = ("fetch", "rootfs", "squashfs", "initramfs")
PUBLISH = (("disk.img", "{name}-{version}.img"), ("disk.img.xz", "{name}-{version}.img.xz"),
           ("disk.img.bmap", "{name}-{version}.img.bmap"))


def published(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (*PUBLISH, *((("disk.qcow2", "{name}-{version}.qcow2"),) if options["qcow2"] else ()))
TOOLS = {**grub.TOOLS, **disk.TOOLS, "xz": "xz-utils", "bmaptool": "bmap-tools"}
BIOS_BOOT_MIB = 1
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["arch", "firmware", "label", "cmdline", "version", "name", "config", "source_date_epoch",
                 "slot_mib", "boot_mib", "state_mib", "qcow2"],
    "properties": {
        "arch": {"enum": [a.value for a in Architecture]},
        "firmware": {"type": "array", "items": {"enum": ["bios", "uefi"]}, "minItems": 1},
        "label": {"type": "string", "pattern": "^[A-Z0-9_]{1,11}$"}, "cmdline": {"type": "string"},
        "version": {"type": "string"}, "name": {"type": "string"}, "config": {"type": ["string", "null"]},
        "source_date_epoch": {"type": "integer"}, "slot_mib": {"type": "integer"},
        "boot_mib": {"type": "integer"}, "state_mib": {"type": "integer"}, "qcow2": {"type": "boolean"},
    },
}


def layout_for(options: dict[str, Any], boot: Path | None = None, slot_a: Path | None = None,
               state: Path | None = None) -> disk.Disk:
    """The disk, as data: the same for the image and for ``basalt install``."""
    parts = [disk.Partition(layout.BIOS_LABEL, disk.BIOS_BOOT, BIOS_BOOT_MIB)] if "bios" in options["firmware"] else []
    parts += [disk.Partition(layout.BOOT_LABEL, disk.ESP, options["boot_mib"], boot),
              disk.Partition(layout.SLOT_LABELS["a"], disk.LINUX_DATA, options["slot_mib"], slot_a),
              disk.Partition(layout.SLOT_LABELS["b"], disk.LINUX_DATA, options["slot_mib"]),
              disk.Partition(layout.STATE_LABEL, disk.LINUX_DATA, options["state_mib"], state)]
    return disk.Disk("gpt", tuple(parts), seed=f"{options['name']}-{options['version']}")


def grub_cfg(options: dict[str, Any]) -> str:
    return grub.render("grub-disk.cfg.j2", version=options["version"], cmdline=options["cmdline"],
                       label=options["label"], slot_dir=layout.MEDIUM_DIR)


def run(ctx: Any, options: dict[str, Any]) -> None:
    arch, epoch = Architecture(options["arch"]), options["source_date_epoch"]
    grub_lib = grub.unpack(ctx.input("fetch"), ctx.store, ctx.work / "grub")
    early = ctx.work / "early.cfg"
    early.write_text(grub.early_cfg(medium.marker_name(options["name"], options["version"], options["config"])))
    cores = grub.core_images(grub_lib, arch, options["firmware"], "disk", early, ctx.work, "i386-pc")
    slot = layout.slot_dir("a")
    files: dict[str, bytes | Path] = {
        **medium.files(options["name"], options["version"], options["config"], ctx.input("rootfs") / "root"),
        "/boot/grub/grub.cfg": grub_cfg(options).encode(),
        layout.GRUB_ENV: grub.env_block({"basalt_slot": "a"}),
        f"{slot}/vmlinuz": ctx.input("rootfs") / "kernel" / "vmlinuz",
        f"{slot}/initrd.img": ctx.input("initramfs") / "initrd.img",
        f"{slot}/version": (options["version"] + "\n").encode(),
        f"{slot}/{slots.BUILD_INFO}": json.dumps({
            "version": options["version"], "image": options["name"],
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))}, sort_keys=True).encode(),
    }
    if "uefi" in cores:
        files[f"/EFI/BOOT/BOOT{arch.to_efi()}.EFI"] = cores["uefi"]
    boot = ctx.work / "boot.fat"
    with progress.step("Boot partition (FAT)"):
        disk.fat(boot, options["label"], options["boot_mib"] * 1024, files, epoch, seed=options["name"])
    state = ctx.work / "state.ext4"
    with progress.step("State partition (ext4)"):
        disk.ext4(state, layout.STATE_LABEL, options["state_mib"], None, epoch, seed=options["name"])
    squashfs = ctx.input("squashfs") / "rootfs.squashfs"
    image = ctx.out / "disk.img"
    with progress.step("Disk image (GPT)"):
        placed = disk.write(layout_for(options, boot, squashfs, state), image)
    if "bios" in cores:
        bios = next(p for p in placed if p.partition.name == layout.BIOS_LABEL)
        grub.embed_bios(image, grub_lib / "i386-pc" / "boot.img", cores["bios"], bios.start, bios.sectors)
    disk.flashables(image)
    if options["qcow2"]:
        with progress.step("qcow2 copy"):
            proc = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image),
                                   str(ctx.out / "disk.qcow2")], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BasaltError(Problem(f"qemu-img convert failed: {proc.stderr.strip()}",
                                          hint="apt-get install qemu-utils"))
