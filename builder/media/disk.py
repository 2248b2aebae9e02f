"""The disk layer: partition tables described as data, and written without mounts, loop devices or
privilege: filesystems are built as files (FAT with mtools, ext4 with ``mkfs.ext4 -d``), the table
written by agent/disk/partitions.py (the same code ``basalt install`` uses on a disk), and each
partition's content copied to its offset, sparsely (a block of zeros is skipped, so the image file
stays sparse).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from agent import layout
from agent.disk.partitions import BIOS_BOOT, ESP, LINUX_DATA, MIB, SECTOR, Disk, Partition, Placed, place, write_table
from agent.errors import BasaltError, Problem
from builder import host, progress

__all__ = ["BIOS_BOOT", "ESP", "LINUX_DATA", "MIB", "SECTOR", "Disk", "Partition", "Placed", "copy_sparse", "ext4",
           "fat", "flashables", "place", "write"]
TOOLS = {"mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools", "mkfs.ext4": "e2fsprogs"}


def write(disk: Disk, dest: Path, size_mib: int | None = None) -> list[Placed]:
    """Write ``disk`` as a sparse image file at ``dest`` (replaced only when complete)."""
    size_mib = size_mib or disk.min_size_mib()
    placed = place(disk, size_mib)
    for pl in placed:
        content = pl.partition.content
        if isinstance(content, Path) and content.stat().st_size > pl.sectors * SECTOR:
            raise BasaltError(Problem(f"partition {pl.partition.name}: {content.name} is {content.stat().st_size >> 20}"
                                      f" MiB, the partition {pl.sectors * SECTOR >> 20} MiB",
                                      hint="make the partition larger in the image definition"))
    part = dest.with_name(dest.name + ".partial")
    with part.open("wb") as f:
        f.truncate(size_mib * MIB)
    try:
        with part.open("r+b") as f:
            write_table(f, disk, placed, size_mib * MIB // SECTOR)
            for pl in placed:
                if isinstance(pl.partition.content, Path):
                    with progress.step(f"Writing {pl.partition.name} ({pl.partition.content.name})"):
                        copy_sparse(pl.partition.content, f, pl.start * SECTOR)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return placed


def copy_sparse(src: Path, out: BinaryIO, offset: int, block: int = 1 << 16, label: str = "") -> None:
    """Copy ``src`` into the open file ``out`` at ``offset``, skipping all-zero blocks (holes stay holes)."""
    zero = bytes(block)
    bar = progress.Bar(label or src.name, src.stat().st_size)
    with src.open("rb") as fin:
        pos = offset
        while chunk := fin.read(block):
            if chunk != zero[:len(chunk)]:
                out.seek(pos)
                out.write(chunk)
            pos += len(chunk)
            bar.update(len(chunk))
    bar.close()


def fat(dest: Path, label: str, size_kib: int, files: Mapping[str, bytes | Path], epoch: int,
        seed: str = "") -> None:
    """A FAT image at ``dest`` holding ``files`` (by path on the filesystem), built with mtools."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    volume = hashlib.sha256(f"{seed}/{label}".encode()).hexdigest()[:8]
    host.run(["mkfs.vfat", "--invariant", "-i", volume, "-n", label, "-C", str(dest), str(size_kib)], env=env)
    dirs = sorted({"/".join(path.strip("/").split("/")[:i]) for path in files
                   for i in range(1, len(path.strip("/").split("/")))})
    if dirs:
        host.run(["mmd", "-i", str(dest), *(f"::/{d}" for d in dirs)], env=env)
    staging = dest.with_name(dest.name + ".files")
    staging.mkdir(exist_ok=True)
    try:
        for n, (path, content) in enumerate(sorted(files.items())):
            src = content if isinstance(content, Path) else staging / str(n)
            if not isinstance(content, Path):
                src.write_bytes(content)
            host.run(["mcopy", "-i", str(dest), str(src), f"::/{path.strip('/')}"], env=env)  # times: SOURCE_DATE_EPOCH
    finally:
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()


def ext4(dest: Path, label: str, size_mib: int, tree: Path | None, epoch: int, seed: str) -> None:
    """An ext4 image at ``dest`` (sparse), populated from ``tree`` if given, reproducibly."""
    with dest.open("wb") as f:
        f.truncate(size_mib * MIB)
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    fs_uuid = str(uuid.UUID(bytes=hashlib.sha256(f"{seed}/{label}".encode()).digest()[:16], version=4))
    hash_seed = str(uuid.UUID(bytes=hashlib.sha256(f"{seed}/{label}/hash".encode()).digest()[:16], version=4))
    host.run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-E", f"root_owner=0:0,hash_seed={hash_seed}",
          *(["-d", str(tree)] if tree else []), str(dest)], env=env)


def flashables(image: Path, xz: bool = True) -> None:
    """``IMAGE.xz`` (multithreaded xz; holes compress to nothing) and ``IMAGE.bmap`` (bmaptool's
    block map: ``bmaptool copy`` writes only the mapped blocks, and checks each range's sha256)."""
    with progress.step(f"Block map of {image.name} (bmaptool)"):
        host.run(["bmaptool", "-q", "create", "-o", str(image.with_name(image.name + ".bmap")), str(image)])
    if not xz:
        return
    with progress.step(f"Compressing {image.name} (xz)"):
        with (image.with_name(image.name + ".xz")).open("wb") as out:
            # -0: a third of -3's time for the same size (the squashfs inside is compressed already)
            host.run(["xz", "-T0", "-0", "-c", str(image)], stdout=out)


def boot_partition(path: Path) -> int:
    """The byte offset of a Basalt disk image's boot partition (FAT), where stamping and the
    direct kernel boot read and write."""
    from agent.disk import partitions
    with path.open("rb") as f:
        offset = partitions.boot_partition(f)
    if offset is None:
        raise BasaltError(Problem(f"{path}: no boot partition ({layout.BOOT_LABEL}) found",
                                  hint="give a Basalt disk image (x86_64-raw, arm64-efi, rpi)"))
    return offset
