"""iso: a bootable ISO 9660 image (pycdlib) with GRUB for BIOS and UEFI.

BIOS boots GRUB's El Torito image (no emulation, boot info table); UEFI boots
the El Torito EFI entry, a FAT image holding ``EFI/BOOT/BOOT<arch>.EFI``. Both
GRUBs find the medium by a marker file unique to this build and read the same
``/boot/grub/grub.cfg``. The site config, if any, lives on the medium at
``/basalt/config.yaml`` so a config-only change rebuilds only this stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pycdlib

from agent import layout
from agent.errors import BasaltError, Problem
from builder import progress
from builder.arch import Architecture
from builder.stages.fetch import blobs_by_role

NAME = "iso"
VERSION = 1
SOURCES = ("builder/templates/grub.cfg.j2", "agent/layout.py")
VOLATILE = False
INPUTS = ("fetch", "rootfs", "squashfs", "initramfs")
PUBLISH = (("basalt.iso", "{name}-{version}.iso"),)
TOOLS = {"grub-mkimage": "grub-common", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"}
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["arch", "firmware", "volume_id", "cmdline", "version", "name", "config", "source_date_epoch"],
    "properties": {
        "arch": {"enum": [a.value for a in Architecture]},
        "firmware": {"type": "array", "items": {"enum": ["bios", "uefi"]}, "minItems": 1},
        "volume_id": {"type": "string"}, "cmdline": {"type": "string"},
        "version": {"type": "string"}, "name": {"type": "string"},
        "config": {"type": ["string", "null"]}, "source_date_epoch": {"type": "integer"},
    },
}

GRUB_MODULES_COMMON = ["iso9660", "normal", "search", "search_fs_file", "configfile", "linux", "echo",
                       "serial", "terminal", "test", "true", "ls", "cat", "reboot", "halt", "sleep"]
GRUB_MODULES = {"bios": ["biosdisk", "part_msdos", "part_gpt"],
                "uefi": ["part_gpt", "part_msdos", "fat", "efi_gop", "all_video"]}


def manifest(options: dict[str, Any], tree: Path) -> dict[str, Any]:
    config = options["config"]
    return {"config": {"sha256": hashlib.sha256(config.encode()).hexdigest()} if config else None}


def marker_name(options: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{options['name']}-{options['version']}-{options['config']}".encode()).hexdigest()
    return f"id-{digest[:16]}"


def precompiled_config(text: str, tree: Path) -> bytes:
    """The site config's normalised value for the node to use without parsing it again, keyed
    to the schema the image carries (agent/sources.py)."""
    from agent.config import check_text
    from agent.sources import precompile
    schema_raw = (tree / layout.LIB_SCHEMA.lstrip("/")).read_bytes()
    loaded = check_text(text, "config.yaml")
    if loaded.problems:  # the plan validated it already; this is the same check
        raise BasaltError(loaded.problems)
    return precompile(text.encode(), loaded.value, schema_raw)


def grub_cfg(options: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template("grub.cfg.j2").render(
        version=options["version"], cmdline=options["cmdline"], label=options["volume_id"],
        kernel=layout.MEDIUM_KERNEL, initrd=layout.MEDIUM_INITRD)


def early_cfg(marker: str) -> str:
    # GRUB runs this before its normal mode: plain commands only (no if/fi).
    return ("serial --unit=0 --speed=115200\n"
            "terminal_output serial console\n"
            f"search --no-floppy --set=root --file {layout.MEDIUM_DIR}/{marker}\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n"
            f"echo \"basalt: boot loader cannot find {layout.MEDIUM_DIR}/{marker} on any disk; devices:\"\n"
            "ls\n")


def grub_image(grub_lib: Path, fmt: str, modules: list[str], early: Path, dest: Path) -> None:
    argv = ["grub-mkimage", "-d", str(grub_lib), "-O", fmt, "-o", str(dest), "-p", "/boot/grub",
            "-c", str(early), *modules]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BasaltError(Problem(f"grub-mkimage -O {fmt} failed: {proc.stderr.strip()}",
                                  hint="the host's grub-common must be able to read the fetched GRUB modules"))


def efi_fat_image(loader: Path, arch: Architecture, dest: Path, epoch: int) -> None:
    """A FAT image holding the removable-media loader path, built with mtools (no mount)."""
    size_kib = max(1440, (loader.stat().st_size // 1024 + 256) // 32 * 32 + 32)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    steps = [["mkfs.vfat", "--invariant", "-n", layout.ESP_LABEL, "-C", str(dest), str(size_kib)],
             ["mmd", "-i", str(dest), "::/EFI", "::/EFI/BOOT"],
             ["mcopy", "-i", str(dest), str(loader), f"::/EFI/BOOT/BOOT{arch.to_efi()}.EFI"]]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise BasaltError(Problem(f"{argv[0]} failed: {proc.stderr.strip()}"))


@contextlib.contextmanager
def frozen_clock(epoch: int) -> Iterator[None]:
    """pycdlib stamps every record with time.time(); pin it for reproducible images."""
    real_time, real_localtime = time.time, time.localtime
    time.time = lambda: float(epoch)  # type: ignore[assignment]
    time.localtime = time.gmtime  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time, time.localtime = real_time, real_localtime  # type: ignore[assignment]


def iso_name(path: str) -> str:
    """``/boot/grub/grub.cfg`` -> ISO 9660 level-3 identifier ``/BOOT/GRUB/GRUB.CFG;1``."""
    parts = path.strip("/").split("/")
    clean = [p.upper().replace("-", "_") for p in parts]
    leaf = clean[-1] + ("" if "." in clean[-1] else ".") + ";1"
    return "/" + "/".join([*clean[:-1], leaf])


def run(ctx: Any, options: dict[str, Any]) -> None:
    arch = Architecture(options["arch"])
    epoch = options["source_date_epoch"]
    grub_root = ctx.work / "grub"
    for _row, blob in blobs_by_role(ctx.input("fetch"), ctx.store, "boot"):
        subprocess.run(["dpkg-deb", "-x", str(blob), str(grub_root)], check=True)
    marker = marker_name(options)
    early = ctx.work / "early.cfg"
    early.write_text(early_cfg(marker))
    files: dict[str, bytes | Path] = {
        "/boot/grub/grub.cfg": grub_cfg(options).encode(),
        f"{layout.MEDIUM_DIR}/{marker}": b"",
        layout.MEDIUM_VERSION: (options["version"] + "\n").encode(),
        layout.MEDIUM_KERNEL: ctx.input("rootfs") / "kernel" / "vmlinuz",
        layout.MEDIUM_INITRD: ctx.input("initramfs") / "initrd.img",
        layout.MEDIUM_ROOT: ctx.input("squashfs") / "rootfs.squashfs",
    }
    if options["config"] is not None:
        files[layout.MEDIUM_CONFIG] = options["config"].encode()
        files[layout.MEDIUM_CONFIG_BIN] = precompiled_config(options["config"], ctx.input("rootfs") / "root")
    boot_entries = []
    if "bios" in options["firmware"]:
        bios = ctx.work / "bios.img"
        grub_image(grub_root / "usr/lib/grub" / str(arch.to_grub_bios()), "i386-pc-eltorito",
                   [*GRUB_MODULES_COMMON, *GRUB_MODULES["bios"]], early, bios)
        files["/boot/grub/bios.img"] = bios
        boot_entries.append(("/boot/grub/bios.img", False))
    if "uefi" in options["firmware"]:
        loader = ctx.work / "grub.efi"
        grub_image(grub_root / "usr/lib/grub" / arch.to_grub_efi(), arch.to_grub_efi(),
                   [*GRUB_MODULES_COMMON, *GRUB_MODULES["uefi"]], early, loader)
        efi_img = ctx.work / "efi.img"
        efi_fat_image(loader, arch, efi_img, epoch)
        files["/boot/grub/efi.img"] = efi_img
        boot_entries.append(("/boot/grub/efi.img", True))
    dest = ctx.out / "basalt.iso"
    with progress.step("Writing ISO 9660 image"), frozen_clock(epoch):
        write_iso(dest, options["volume_id"], files, boot_entries)


GRUB2_BOOT_INFO_OFFSET = 2548
# GRUB's BIOS disk layer reads through a 32 KiB cache; a read that runs past the
# end of the medium fails and file contents come back as garbage. Pad like xorriso.
TAIL_PADDING = 300 * 1024


def patch_grub2_boot_info(image: Path, extent: int) -> None:
    """GRUB's i386-pc El Torito image reads, at byte 2548, the 512-byte sector
    where its own file starts plus 5 (what xorriso's --grub2-boot-info writes);
    without it GRUB decompresses the wrong sectors and the embedded config is garbage."""
    with image.open("r+b") as f:
        f.seek(extent * 2048 + GRUB2_BOOT_INFO_OFFSET)
        f.write(struct.pack("<Q", extent * 4 + 5))


def write_iso(dest: Path, volume_id: str, files: dict[str, bytes | Path], boot: list[tuple[str, bool]]) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident=volume_id, sys_ident="LINUX",
            app_ident_str="BASALT")
    made: set[str] = set()
    opened = []
    try:
        for path in sorted(files):
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                d = "/" + "/".join(parts[:depth])
                if d not in made:
                    iso.add_directory(iso_name(d).removesuffix(".;1"), rr_name=parts[depth - 1],
                                      joliet_path=d)
                    made.add(d)
            content = files[path]
            if isinstance(content, Path):
                fp = content.open("rb")
                opened.append(fp)
                length = content.stat().st_size
            else:
                fp = io.BytesIO(content)  # type: ignore[assignment]
                length = len(content)
            iso.add_fp(fp, length, iso_name(path), rr_name=parts[-1], joliet_path=path)
        for i, (path, efi) in enumerate(boot):
            kwargs: dict[str, Any] = {"bootcatfile": "/BOOT/GRUB/BOOT.CAT;1", "rr_bootcatname": "boot.cat",
                                      "joliet_bootcatfile": "/boot/grub/boot.cat"} if i == 0 else {}
            if efi:
                iso.add_eltorito(iso_name(path), efi=True, platform_id=0xEF, media_name="noemul", **kwargs)
            else:
                iso.add_eltorito(iso_name(path), boot_load_size=4, boot_info_table=True,
                                 media_name="noemul", **kwargs)
        part = dest.with_suffix(".partial")
        iso.write(str(part))
        for path, efi in boot:
            if not efi:
                patch_grub2_boot_info(part, iso.get_record(iso_path=iso_name(path)).extent_location())
        with part.open("ab") as f:
            f.write(b"\0" * TAIL_PADDING)
        part.rename(dest)
    finally:
        iso.close()
        for fp in opened:
            fp.close()
