"""GRUB, in one place for every output: the fetched modules, core images for i386-pc and EFI
(made with the host's grub-mkimage from the target's modules, so no target code runs), the
early config that finds the boot medium by a marker file, the menu templates, and the BIOS
embedding of a core image into a disk's BIOS boot partition (what grub-bios-setup does, on a file).
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import jinja2

from agent import layout
from agent.errors import BasaltError, Problem
from builder.arch import Architecture
from builder.stages.fetch import blobs_by_role

TEMPLATES = Path(__file__).resolve().parent / "templates"
TOOLS = {"grub-mkimage": "grub-common", "dpkg-deb": "dpkg"}
MODULES_COMMON = ["normal", "search", "search_fs_file", "configfile", "linux", "echo", "serial", "terminal",
                  "test", "true", "ls", "cat", "reboot", "halt", "sleep"]
MODULES = {"bios": ["biosdisk", "part_msdos", "part_gpt"],
           "uefi": ["part_gpt", "part_msdos", "fat", "efi_gop", "all_video"]}
# What a medium needs GRUB to read: the ISO its filesystem; a disk its ESP (FAT), the boot
# selection's environment block and the partition arithmetic of the slot menu.
MEDIUM_MODULES = {"iso": ["iso9660"], "disk": ["fat", "part_gpt", "part_msdos", "loadenv", "regexp"]}
ENV_BLOCK_SIZE = 1024


def unpack(fetch_dir: Path, store: Any, dest: Path) -> Path:
    """The fetched GRUB packages (role ``boot``) unpacked under ``dest``; returns its usr/lib/grub."""
    for _row, blob in blobs_by_role(fetch_dir, store, "boot"):
        subprocess.run(["dpkg-deb", "-x", str(blob), str(dest)], check=True)
    return dest / "usr/lib/grub"


def render(template: str, **values: Any) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template(template).render(**values)


def early_cfg(marker: str) -> str:
    """The config built into a core image: find the medium by its marker, read its grub.cfg.
    GRUB runs this before its normal mode: plain commands only (no if/fi)."""
    return ("serial --unit=0 --speed=115200\n"
            "terminal_output serial console\n"
            f"search --no-floppy --set=root --file {layout.MEDIUM_DIR}/{marker}\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n"
            f"echo \"basalt: boot loader cannot find {layout.MEDIUM_DIR}/{marker} on any disk; devices:\"\n"
            "ls\n")


def mkimage(grub_lib: Path, fmt: str, modules: list[str], early: Path, dest: Path) -> None:
    argv = ["grub-mkimage", "-d", str(grub_lib / fmt.removesuffix("-eltorito")), "-O", fmt, "-o", str(dest),
            "-p", "/boot/grub", "-c", str(early), *modules]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BasaltError(Problem(f"grub-mkimage -O {fmt} failed: {proc.stderr.strip()}",
                                  hint="the host's grub-common must be able to read the fetched GRUB modules"))


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


def env_block(values: dict[str, str]) -> bytes:
    """A GRUB environment block (grubenv): ``name=value`` lines padded with '#' to 1 KiB."""
    text = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    if len(text) > ENV_BLOCK_SIZE:
        raise BasaltError(Problem("GRUB environment block overflows 1 KiB"))
    return (text + "#" * (ENV_BLOCK_SIZE - len(text))).encode()


# i386-pc boot.img (the MBR's boot code) and diskboot.img (core.img's first sector).
BOOT_KERNEL_SECTOR = 0x5C  # u64: the LBA of core.img's first sector
BOOT_DRIVE_CHECK = 0x66  # a short jmp replaced by two nops on hard disks (BIOSes that pass a bad drive)
BOOT_CODE_END = 0x1B8  # the disk signature and the partition table follow: kept
BLOCKLIST = 512 - 12  # in core.img's first sector: start (u64), length (u16), segment (u16)
CORE_SEGMENT = 0x820  # where the rest of core.img is loaded (0x800 + one sector)


def embed_bios(disk: Path, boot_img: Path, core_img: Path, core_lba: int, room_sectors: int) -> None:
    """Install GRUB for BIOS on a disk image, as grub-bios-setup does on a GPT disk: boot.img's code
    into the MBR (its partition table kept), core.img into the BIOS boot partition at ``core_lba``,
    boot.img pointed at core.img's first sector and that sector's blocklist at the rest of it."""
    boot, core = bytearray(boot_img.read_bytes()), bytearray(core_img.read_bytes())
    if len(boot) != 512:
        raise BasaltError(Problem(f"{boot_img}: not a 512-byte boot.img"))
    core += b"\0" * (-len(core) % 512)
    sectors = len(core) // 512
    if sectors > room_sectors:
        raise BasaltError(Problem(f"GRUB's core image ({sectors} sectors) does not fit the BIOS boot partition "
                                  f"({room_sectors} sectors)", hint="make the bios_boot partition larger"))
    struct.pack_into("<Q", boot, BOOT_KERNEL_SECTOR, core_lba)
    boot[BOOT_DRIVE_CHECK:BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    struct.pack_into("<QHH", core, BLOCKLIST, core_lba + 1, sectors - 1, CORE_SEGMENT)
    with disk.open("r+b") as f:
        mbr = bytearray(f.read(512))
        mbr[:BOOT_CODE_END] = boot[:BOOT_CODE_END]
        f.seek(0)
        f.write(mbr)
        f.seek(core_lba * 512)
        f.write(core)
