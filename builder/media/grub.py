"""GRUB, in one place for every output: the fetched modules, core images for i386-pc and EFI
(made with the host's grub-mkimage from the target's modules, so no target code runs), the
early config that finds the boot medium by a marker file, the menu templates, and the BIOS
embedding of a core image into a disk's BIOS boot partition (agent/disk/partitions.py, on a file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from agent import layout
from agent.disk import partitions
from builder import host
from builder.arch import Architecture
from builder.debian import blobs_by_role

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TOOLS = {"grub-mkimage": "grub-common", "dpkg-deb": "dpkg"}
MODULES_COMMON = ["normal", "search", "search_fs_file", "configfile", "linux", "echo", "serial", "terminal",
                  "test", "true", "ls", "cat", "reboot", "halt", "sleep"]
MODULES = {"bios": ["biosdisk", "part_msdos", "part_gpt"],
           "uefi": ["part_gpt", "part_msdos", "fat", "efi_gop", "all_video"]}
# What a medium needs GRUB to read: the ISO its filesystem; a disk its ESP (FAT), the boot
# selection's environment block and the partition arithmetic of the slot menu.
MEDIUM_MODULES = {"iso": ["iso9660"], "disk": ["fat", "part_gpt", "part_msdos", "loadenv", "regexp", "gzio"]}


def unpack(fetch_dir: Path, store: Any, dest: Path) -> Path:
    """The fetched GRUB packages (role ``boot``) unpacked under ``dest``; returns its usr/lib/grub."""
    for _row, blob in blobs_by_role(fetch_dir, store, "boot"):
        host.run(["dpkg-deb", "-x", str(blob), str(dest)], f"unpacking {blob.name}")
    return dest / "usr/lib/grub"


def render(template: str, **values: Any) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template(template).render(**values)


def early_cfg(marker: str, serial: bool = True) -> str:
    """The config built into a core image: find the medium by its marker, read its grub.cfg.
    GRUB runs this before its normal mode: plain commands only (no if/fi)."""
    return (("serial --unit=0 --speed=115200\nterminal_output serial console\n" if serial else "")
            + f"search --no-floppy --set=root --file {layout.MEDIUM_DIR}/{marker}\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n"
            f"echo \"basalt: boot loader cannot find {layout.MEDIUM_DIR}/{marker} on any disk; devices:\"\n"
            "ls\n")


def mkimage(grub_lib: Path, fmt: str, modules: list[str], early: Path, dest: Path) -> None:
    argv = ["grub-mkimage", "-d", str(grub_lib / fmt.removesuffix("-eltorito")), "-O", fmt, "-o", str(dest),
            "-p", "/boot/grub", "-c", str(early), *modules]
    host.run(argv, f"grub-mkimage -O {fmt}",
             hint="the host's grub-common must be able to read the fetched GRUB modules")


def core_images(grub_lib: Path, arch: Architecture, firmware: list[str], medium: str, early: Path,
                work: Path, bios_format: str) -> dict[str, Path]:
    """One core image per firmware: ``bios`` (``bios_format``: i386-pc-eltorito for an ISO,
    i386-pc for a disk) and ``uefi`` (the EFI application)."""
    out = {}
    if "bios" in firmware:
        bios_platform = arch.to_grub_bios()
        assert bios_platform is not None  # the image definition's checks allow bios only where it exists
        out["bios"] = work / "core-bios.img"
        mkimage(grub_lib, bios_format, [*MODULES_COMMON, *MEDIUM_MODULES[medium], *MODULES["bios"]], early,
                out["bios"])
    if "uefi" in firmware:
        out["uefi"] = work / "grub.efi"
        mkimage(grub_lib, arch.to_grub_efi(), [*MODULES_COMMON, *MEDIUM_MODULES[medium], *MODULES["uefi"]], early,
                out["uefi"])
    return out


def embed_bios(disk: Path, boot_img: Path, core_img: Path, core_lba: int, room_sectors: int) -> None:
    """GRUB for BIOS on the disk image ``disk`` (agent/disk/partitions.py does it, for the node too)."""
    with disk.open("r+b") as f:
        partitions.embed_bios(f, boot_img.read_bytes(), core_img.read_bytes(), core_lba, room_sectors)
