"""iso: a bootable ISO 9660 image (pycdlib) with GRUB for BIOS and UEFI.

BIOS boots GRUB's El Torito image (no emulation, boot info table); UEFI boots
the El Torito EFI entry, a FAT image holding ``EFI/BOOT/BOOT<arch>.EFI``. Both
GRUBs find the medium by a marker file unique to this build and read the same
``/boot/grub/grub.cfg``. The site config, if any, lives on the medium at
``/basalt/config.yaml`` so a config-only change rebuilds only this stage.

The ISO is also the installer: ``/basalt/install/`` carries the plan of the A/B disk
(builder/media/abdisk.py) that ``basalt install`` writes, the disk's GRUB, and its empty boot and state
filesystems (compressed); the kernel, initramfs and squashfs are the ISO's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib

from agent import layout
from agent.disk import installplan
from agent.errors import BasaltError, Problem
from builder import progress, signing
from builder.arch import Architecture
from builder.download import sha256_file
from builder.media import abdisk, disk, grub, medium
from builder.stages import StageContext

NAME = "iso"
VERSION = 2
SOURCES = ("builder/templates/grub.cfg.j2", *abdisk.SOURCES)
VOLATILE = False
INPUTS = ("fetch", "rootfs", "squashfs", "initramfs")
PUBLISH = (("basalt.iso", "{name}-{version}.iso"),)
TOOLS = {**grub.TOOLS, **disk.TOOLS}  # disk: the installer payload's empty FAT and ext4
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["arch", "firmware", "volume_id", "cmdline", "version", "name", "config", "source_date_epoch",
                 "slot_mib", "boot_mib", "state_mib", "signing_key", "public_key"],
    "properties": {
        "arch": {"enum": [a.value for a in Architecture]},
        "firmware": {"type": "array", "items": {"enum": ["bios", "uefi"]}, "minItems": 1},
        "volume_id": {"type": "string"}, "cmdline": {"type": "string"},
        "version": {"type": "string"}, "name": {"type": "string"},
        "config": {"type": ["string", "null"]}, "source_date_epoch": {"type": "integer"},
        # the disk basalt install writes (builder/media/abdisk.py)
        "slot_mib": {"type": "integer"}, "boot_mib": {"type": "integer"}, "state_mib": {"type": "integer"},
        # the install plan is signed as bundles are (install.iso_url verifies it)
        "signing_key": {"type": "string"}, "public_key": {"type": "string"},
    },
}

def manifest(options: dict[str, Any], tree: Path) -> dict[str, Any]:
    config = options["config"]
    return {"config": {"sha256": hashlib.sha256(config.encode()).hexdigest()} if config else None}


def marker_name(options: dict[str, Any]) -> str:
    return medium.marker_name(options["name"], options["version"], options["config"])


def grub_cfg(options: dict[str, Any]) -> str:
    return grub.render("grub.cfg.j2", serial=Architecture(options["arch"]).grub_serial(),
                       version=options["version"], cmdline=options["cmdline"],
                       label=options["volume_id"], kernel=layout.MEDIUM_KERNEL, initrd=layout.MEDIUM_INITRD)


def efi_fat_image(loader: Path, arch: Architecture, dest: Path, epoch: int) -> None:
    """A FAT image holding the removable-media loader path, built with mtools (no mount)."""
    size_kib = max(1440, (loader.stat().st_size // 1024 + 256) // 32 * 32 + 32)
    disk.fat(dest, layout.ESP_LABEL, size_kib, {f"EFI/BOOT/BOOT{arch.to_efi()}.EFI": loader}, epoch)


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
    stem, dot, suffix = clean[-1].rpartition(".")
    leaf = (stem.replace(".", "_") + "." + suffix if dot else clean[-1] + ".") + ";1"  # one dot: PLAN_JSON.MINISIG
    return "/" + "/".join([*clean[:-1], leaf])


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    arch = Architecture(options["arch"])
    epoch = options["source_date_epoch"]
    grub_lib = grub.unpack(ctx.input("fetch"), ctx.store, ctx.work / "grub")
    marker = marker_name(options)
    early = ctx.work / "early.cfg"
    early.write_text(grub.early_cfg(marker, arch.grub_serial()))
    files: dict[str, bytes | Path] = {
        "/boot/grub/grub.cfg": grub_cfg(options).encode(),
        **medium.files(options["name"], options["version"], options["config"], ctx.input("rootfs") / "root"),
        layout.MEDIUM_KERNEL: ctx.input("rootfs") / "kernel" / "vmlinuz",
        layout.MEDIUM_INITRD: ctx.input("initramfs") / "initrd.img",
        layout.MEDIUM_ROOT: ctx.input("squashfs") / "rootfs.squashfs",
        # reserved for 'inv configure' to stamp a site config into in place (builder/fleet/stamp.py)
        layout.MEDIUM_SITE: bytes(layout.SITE_RESERVE),
    }
    boot_entries = []
    cores = grub.core_images(grub_lib, arch, options["firmware"], "iso", early, ctx.work, "i386-pc-eltorito")
    if "bios" in cores:
        files["/boot/grub/bios.img"] = cores["bios"]
        boot_entries.append(("/boot/grub/bios.img", False))
    if "uefi" in cores:
        efi_img = ctx.work / "efi.img"
        efi_fat_image(cores["uefi"], arch, efi_img, epoch)
        files["/boot/grub/efi.img"] = efi_img
        boot_entries.append(("/boot/grub/efi.img", True))
    files.update(install_payload(options, grub_lib, ctx.work, ctx.input("rootfs"), ctx.input("initramfs")))
    sign_plan(files, options, ctx.work)
    dest = ctx.out / "basalt.iso"
    with progress.step("Writing ISO 9660 image"), frozen_clock(epoch):
        write_iso(dest, options["volume_id"], files, boot_entries)


def sign_plan(files: dict[str, bytes | Path], options: dict[str, Any], work: Path) -> None:
    """The install plan with the sha256 of every file it takes from the medium, signed with the
    image's upgrade key beside it (plan.json.minisig): what ``install.iso_url`` verifies."""
    def sha256(content: bytes | Path) -> str:
        return hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else sha256_file(content)
    plan = installplan.parse(files[layout.INSTALL_PLAN], "the install plan")  # type: ignore[arg-type]
    plan = dataclasses.replace(plan, digests={where: sha256(files[where]) for where in plan.on_medium})
    key = signing.pair(Path(options["signing_key"]))
    if key.public_text() != options["public_key"]:
        raise BasaltError(Problem(f"{key.public} changed since the build was planned", hint="build again"))
    signed = work / "plan.json"
    signed.write_bytes(plan.to_json())
    files[layout.INSTALL_PLAN] = signed.read_bytes()
    files[layout.INSTALL_PLAN + installplan.SIGNATURE] = signing.sign(
        key, signed, f"basalt install plan {options['name']} {options['version']} {options['arch']}").read_bytes()


def install_payload(options: dict[str, Any], grub_lib: Path, work: Path, rootfs: Path,
                    initramfs: Path) -> dict[str, bytes | Path]:
    """``/basalt/install/``: the plan of the disk ``basalt install`` writes, and what it writes that
    the ISO does not already carry (agent/disk/install.py reads it)."""
    opts = {**options, "label": layout.BOOT_LABEL}
    work = work / "install"
    work.mkdir()
    epoch, where = options["source_date_epoch"], layout.MEDIUM_INSTALL
    cores = abdisk.boot_loaders(opts, grub_lib, work)
    kernel, initrd = rootfs / "kernel" / "vmlinuz", initramfs / "initrd.img"
    payload: dict[str, bytes | Path] = {}
    on_medium = {kernel: layout.MEDIUM_KERNEL, initrd: layout.MEDIUM_INITRD}
    if "uefi" in cores:
        payload[f"{where}/grub.efi"] = cores["uefi"]
        on_medium[cores["uefi"]] = f"{where}/grub.efi"
    if "bios" in cores:
        payload[f"{where}/core.img"] = cores["bios"]
        payload[f"{where}/boot.img"] = grub_lib / "i386-pc" / "boot.img"
    empty = {"boot": work / "boot.fat", "state": work / "state.ext4"}
    disk.fat(empty["boot"], opts["label"], opts["boot_mib"] * 1024, {}, epoch, seed=opts["name"])
    disk.ext4(empty["state"], layout.STATE_LABEL, opts["state_mib"], None, epoch, seed=opts["name"])
    for what, image in empty.items():  # mostly zeros: a few hundred KiB compressed
        payload[f"{where}/{what}-partition.gz"] = gzip.compress(image.read_bytes(), compresslevel=6, mtime=0)
    images = {"boot": f"{where}/boot-partition.gz", "slot": layout.MEDIUM_ROOT,
              "state": f"{where}/state-partition.gz"}
    contents = {layout.BIOS_LABEL: "bios", layout.BOOT_LABEL: "boot", layout.SLOT_LABELS["a"]: "slot",
                layout.STATE_LABEL: "state"}
    disk_layout = abdisk.layout_for(opts)
    boot_files = abdisk.boot_files(opts, rootfs / "root", kernel, initrd, cores.get("uefi"))
    payload[layout.INSTALL_PLAN] = installplan.Plan(
        image=opts["name"], version=opts["version"], arch=opts["arch"], table=disk_layout.table,
        partitions=tuple(dataclasses.replace(p, content=contents.get(p.name)) for p in disk_layout.partitions),
        images=images,
        files=tuple(installplan.BootFile(path, medium=on_medium[content]) if isinstance(content, Path)
                    else installplan.BootFile(path, data=content) for path, content in sorted(boot_files.items())),
        bios=(f"{where}/boot.img", f"{where}/core.img") if "bios" in cores else None,
    ).to_json()
    return payload


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


# What may hold a site's secrets (a join token, passwords): root's alone on the mounted medium (Rock Ridge)
SECRET_FILES = frozenset({layout.MEDIUM_SITE, layout.MEDIUM_CONFIG, layout.MEDIUM_CONFIG_BIN})


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
            iso.add_fp(fp, length, iso_name(path), rr_name=parts[-1], joliet_path=path,
                       file_mode=0o100400 if path in SECRET_FILES else None)
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
