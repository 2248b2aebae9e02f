"""The A/B disk, described once: its partitions, the files of its boot partition and its GRUB.
The raw output writes it into an image file; the ISO carries it as the installer's plan
(``/basalt/install/plan.json``), from which ``basalt install`` (agent/disk/install.py) writes the same
disk onto a machine's. Options are a disk output's: arch, firmware, label (the boot partition's
filesystem label), cmdline, version, name, config, source_date_epoch, slot_mib, boot_mib, state_mib.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

from agent import layout
from agent.disk.partitions import BASIC_DATA, BIOS_BOOT, ESP, LINUX_DATA, Disk, Partition
from agent.upgrade import bootsel, slots
from builder.arch import Architecture
from builder.media import grub, medium

BIOS_BOOT_MIB = 1
SOURCES = ("builder/media/abdisk.py", "builder/templates/grub-disk.cfg.j2", "builder/media/grub.py",
           "builder/media/disk.py", "builder/media/medium.py", "agent/layout.py", "agent/upgrade/slots.py",
           "agent/upgrade/bootsel.py", "agent/disk/partitions.py")


def layout_for(options: dict[str, Any], boot: object = None, slot_a: object = None, state: object = None) -> Disk:
    """The disk, as data: the same for the image and for ``basalt install``."""
    # A board's card (the Raspberry Pi's) has an MBR and a FAT32 boot partition: its boot ROM
    # reads neither GPT nor an 0xEF partition. A board is UEFI only (no BIOS boot partition).
    board = options.get("board")
    table = "dos" if board else "gpt"
    parts = [Partition(layout.BIOS_LABEL, BIOS_BOOT, BIOS_BOOT_MIB)] if "bios" in options["firmware"] else []
    parts += [Partition(layout.BOOT_LABEL, BASIC_DATA if board else ESP, options["boot_mib"], boot),
              Partition(layout.SLOT_LABELS["a"], LINUX_DATA, options["slot_mib"], slot_a),
              Partition(layout.SLOT_LABELS["b"], LINUX_DATA, options["slot_mib"]),
              Partition(layout.STATE_LABEL, LINUX_DATA, options["state_mib"], state)]
    disk = Disk(table, tuple(parts), seed=f"{options['name']}-{options['version']}")
    assert table == "gpt" or ([disk.index(layout.SLOT_LABELS[s]) for s in layout.SLOTS] ==
                              [layout.SLOT_NUMBERS[s] for s in layout.SLOTS] and
                              disk.index(layout.STATE_LABEL) == layout.STATE_NUMBER), \
        "the initramfs finds an MBR disk's slots and state partition by number"
    return disk


def grub_cfg(options: dict[str, Any]) -> str:
    return grub.render("grub-disk.cfg.j2", serial=Architecture(options["arch"]).grub_serial(),
                       version=options["version"], cmdline=options["cmdline"],
                       label=options["label"], slot_dir=layout.MEDIUM_DIR)


def marker(options: dict[str, Any]) -> str:
    """The disk's own marker: not the ISO's, so an ISO's GRUB never takes an installed disk for itself."""
    return medium.marker_name(options["name"], options["version"], options["config"], "disk")


def boot_loaders(options: dict[str, Any], grub_lib: Path, work: Path) -> dict[str, Path]:
    """GRUB's core images for this disk: ``bios`` (i386-pc, embedded) and ``uefi`` (the EFI loader)."""
    early = work / "early-disk.cfg"
    early.write_text(grub.early_cfg(marker(options), Architecture(options["arch"]).grub_serial()))
    return grub.core_images(grub_lib, Architecture(options["arch"]), options["firmware"], "disk", early, work,
                            "i386-pc")


def efi_path(options: dict[str, Any]) -> str:
    return f"/EFI/BOOT/BOOT{Architecture(options['arch']).to_efi()}.EFI"


def slot_kernel(options: dict[str, Any], kernel: Path) -> bytes | Path:
    """The kernel as the boot partition holds it. Debian's arm64 kernel is an uncompressed Image
    (~32 MiB): gzipped it is a third of that, which GRUB (gzio) inflates as it reads, so a slot
    takes less of the boot partition and loads faster from an SD card. An x86 bzImage is
    compressed already."""
    if Architecture(options["arch"]) != Architecture.ARM64:
        return kernel
    return gzip.compress(kernel.read_bytes(), compresslevel=6, mtime=0)


def boot_files(options: dict[str, Any], rootfs_tree: Path, kernel: Path, initrd: Path,
               efi: Path | None) -> dict[str, bytes | Path]:
    """The boot partition's files by path: GRUB (for UEFI), its menu and environment block (slot a),
    the medium's marker, version and site config, and slot a's kernel, initramfs and build record."""
    slot = layout.slot_dir("a")
    files: dict[str, bytes | Path] = {
        **medium.files(options["name"], options["version"], options["config"], rootfs_tree, marker(options)),
        "/boot/grub/grub.cfg": grub_cfg(options).encode(),
        layout.GRUB_ENV: bootsel.format_block({"basalt_slot": "a", "basalt_try": "", "basalt_tries": "0"}),
        f"{slot}/vmlinuz": slot_kernel(options, kernel),
        f"{slot}/initrd.img": initrd,
        f"{slot}/version": (options["version"] + "\n").encode(),
        f"{slot}/{slots.BUILD_INFO}": json.dumps({
            "version": options["version"], "image": options["name"],
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(options["source_date_epoch"]))},
            sort_keys=True).encode(),
    }
    if efi is not None:
        files[efi_path(options)] = efi
    return files
