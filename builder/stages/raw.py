"""raw: an A/B disk image (GPT) that boots by BIOS and UEFI, for flashing or installing.

Partitions (agent/layout.py names them): a BIOS boot partition holding GRUB's i386-pc core image
(embedded as grub-bios-setup would), the boot partition (an ESP, FAT, label BASALT_BOOT: GRUB for
UEFI, the menu and its environment block, each slot's kernel and initramfs, the site config),
slot A (this build's squashfs, written raw), slot B (empty, for the next upgrade) and the state
partition (ext4, BASALT_STATE; grown to the disk by the node). The image file is sparse; with
``qcow2: true`` a qcow2 copy is published too.
"""

from __future__ import annotations

from typing import Any

from agent import layout
from builder import host, progress
from builder.arch import Architecture
from builder.debian import blobs_by_role
from builder.media import abdisk, disk, grub, rpi
from builder.stages import StageContext

NAME = "raw"
VERSION = 1
SOURCES = (*abdisk.SOURCES, *rpi.SOURCES)
VOLATILE = False
INPUTS = ("fetch", "rootfs", "squashfs", "initramfs")
PUBLISH = (("disk.img", "{name}-{version}.img"), ("disk.img.xz", "{name}-{version}.img.xz"),
           ("disk.img.bmap", "{name}-{version}.img.bmap"))
TOOLS = {**grub.TOOLS, **disk.TOOLS, "xz": "xz-utils", "bmaptool": "bmap-tools"}
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["arch", "firmware", "label", "cmdline", "version", "name", "config", "source_date_epoch",
                 "slot_mib", "boot_mib", "state_mib", "qcow2", "board"],
    "properties": {
        "arch": {"enum": [a.value for a in Architecture]},
        "firmware": {"type": "array", "items": {"enum": ["bios", "uefi"]}, "minItems": 1},
        "label": {"type": "string", "pattern": "^[A-Z0-9_]{1,11}$"}, "cmdline": {"type": "string"},
        "version": {"type": "string"}, "name": {"type": "string"}, "config": {"type": ["string", "null"]},
        "source_date_epoch": {"type": "integer"}, "slot_mib": {"type": "integer"},
        "boot_mib": {"type": "integer"}, "state_mib": {"type": "integer"}, "qcow2": {"type": "boolean"},
        "board": {"enum": [None, "rpi"]},
    },
}


def published(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (*PUBLISH, *((("disk.qcow2", "{name}-{version}.qcow2"),) if options["qcow2"] else ()))


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    epoch = options["source_date_epoch"]
    grub_lib = grub.unpack(ctx.input("fetch"), ctx.store, ctx.work / "grub")
    cores = abdisk.boot_loaders(options, grub_lib, ctx.work)
    files = abdisk.boot_files(options, ctx.input("rootfs") / "root", ctx.input("rootfs") / "kernel" / "vmlinuz",
                              ctx.input("initramfs") / "initrd.img", cores.get("uefi"))
    if options["board"] == "rpi":
        tree = rpi.unpack(blobs_by_role(ctx.input("fetch"), ctx.store, "boot"), ctx.work)
        files.update(rpi.boot_files(tree, ctx.input("rootfs") / "kernel" / "dtbs", options["version"]))
    boot = ctx.work / "boot.fat"
    with progress.step("Boot partition (FAT)"):
        disk.fat(boot, options["label"], options["boot_mib"] * 1024, files, epoch, seed=options["name"])
    state = ctx.work / "state.ext4"
    with progress.step("State partition (ext4)"):
        disk.ext4(state, layout.STATE_LABEL, options["state_mib"], None, epoch, seed=options["name"])
    squashfs = ctx.input("squashfs") / "rootfs.squashfs"
    image = ctx.out / "disk.img"
    with progress.step("Disk image (MBR)" if options["board"] else "Disk image (GPT)"):
        placed = disk.write(abdisk.layout_for(options, boot, squashfs, state), image)
    if "bios" in cores:
        bios = next(p for p in placed if p.partition.name == layout.BIOS_LABEL)
        grub.embed_bios(image, grub_lib / "i386-pc" / "boot.img", cores["bios"], bios.start, bios.sectors)
    disk.flashables(image)
    if options["qcow2"]:
        with progress.step("qcow2 copy"):
            host.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(ctx.out / "disk.qcow2")],
                     "qemu-img convert")
