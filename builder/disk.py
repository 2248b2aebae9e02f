"""The disk layer: partition tables described as data, and written without mounts, loop devices or
privilege: filesystems are built as files (FAT with mtools, ext4 with ``mkfs.ext4 -d``), the table
with ``sfdisk`` on the image file, and each partition's content copied to its offset, sparsely (a
block of zeros is skipped, so the image file stays sparse).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import BasaltError, Problem
from builder import progress

MIB = 1 << 20
SECTOR = 512
TOOLS = {"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools", "mkfs.ext4": "e2fsprogs"}
# GPT partition type GUIDs (and MBR type codes).
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MBR_TYPES = {ESP: "ef", LINUX_DATA: "83"}


@dataclass(frozen=True)
class Partition:
    name: str  # the GPT partition name (how the initramfs finds a slot); on MBR, for messages only
    type: str  # a GPT type GUID (MBR_TYPES maps it for an MBR table)
    size_mib: int  # 0: the rest of the disk (the last partition only)
    content: Path | None = None  # a raw image written at the partition's start; None: left empty (sparse)


@dataclass(frozen=True)
class Disk:
    table: str  # "gpt" or "dos" (MBR)
    partitions: tuple[Partition, ...]
    seed: str  # makes the disk and partition UUIDs reproducible: the same build, the same ids

    def min_size_mib(self) -> int:
        """1 MiB before the first partition (alignment) and 1 MiB after the last (GPT's backup)."""
        return 2 + sum(p.size_mib for p in self.partitions)

    def uuid(self, what: str) -> str:
        return str(uuid.UUID(bytes=hashlib.sha256(f"{self.seed}/{what}".encode()).digest()[:16], version=4))

    def index(self, name: str) -> int:
        """1-based partition number of ``name`` (what /dev/vdaN and GRUB's (hd0,gptN) say)."""
        return next(i for i, p in enumerate(self.partitions, 1) if p.name == name)


@dataclass(frozen=True)
class Placed:
    partition: Partition
    number: int
    start: int  # in sectors
    sectors: int


def place(disk: Disk, size_mib: int) -> list[Placed]:
    """Where each partition goes: 1 MiB-aligned, in order, the last taking what is left if 0."""
    out, start = [], MIB // SECTOR
    end = size_mib * MIB // SECTOR - MIB // SECTOR  # the GPT backup header and table live in the last MiB
    for n, p in enumerate(disk.partitions, 1):
        sectors = p.size_mib * MIB // SECTOR if p.size_mib else end - start
        if p.size_mib == 0 and n != len(disk.partitions):
            raise BasaltError(Problem(f"partition {p.name}: only the last partition may take the rest of the disk"))
        if sectors <= 0 or start + sectors > end:
            raise BasaltError(Problem(f"partition {p.name} does not fit a {size_mib} MiB disk",
                                      hint=f"the layout needs at least {disk.min_size_mib()} MiB"))
        if p.content is not None and p.content.stat().st_size > sectors * SECTOR:
            raise BasaltError(Problem(f"partition {p.name}: {p.content.name} is {p.content.stat().st_size >> 20} MiB, "
                                      f"the partition {sectors * SECTOR >> 20} MiB",
                                      hint="make the partition larger in the image definition"))
        out.append(Placed(p, n, start, sectors))
        start += sectors
    return out


def sfdisk_script(disk: Disk, placed: list[Placed]) -> str:
    lines = [f"label: {disk.table}", "unit: sectors"]
    if disk.table == "gpt":
        lines.append(f"label-id: {disk.uuid('disk').upper()}")
    else:
        lines.append(f"label-id: 0x{disk.uuid('disk')[:8]}")
    for pl in placed:
        p = pl.partition
        if disk.table == "gpt":
            lines.append(f"start={pl.start}, size={pl.sectors}, type={p.type}, "
                         f"uuid={disk.uuid(p.name).upper()}, name=\"{p.name}\"")
        else:
            lines.append(f"start={pl.start}, size={pl.sectors}, type={MBR_TYPES[p.type]}"
                         + (", bootable" if pl.number == 1 else ""))
    return "\n".join(lines) + "\n"


def write(disk: Disk, dest: Path, size_mib: int | None = None) -> list[Placed]:
    """Write ``disk`` as a sparse image file at ``dest`` (replaced only when complete)."""
    size_mib = size_mib or disk.min_size_mib()
    placed = place(disk, size_mib)
    part = dest.with_name(dest.name + ".partial")
    with part.open("wb") as f:
        f.truncate(size_mib * MIB)
    try:
        proc = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(part)],
                              input=sfdisk_script(disk, placed), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BasaltError(Problem(f"sfdisk failed: {proc.stderr.strip()}"))
        with part.open("r+b") as f:
            for pl in placed:
                if pl.partition.content is not None:
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


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BasaltError(Problem(f"{argv[0]} failed: {proc.stderr.strip()}"))


def fat(dest: Path, label: str, size_kib: int, files: Mapping[str, bytes | Path], epoch: int,
        seed: str = "") -> None:
    """A FAT image at ``dest`` holding ``files`` (by path on the filesystem), built with mtools."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    volume = hashlib.sha256(f"{seed}/{label}".encode()).hexdigest()[:8]
    _run(["mkfs.vfat", "--invariant", "-i", volume, "-n", label, "-C", str(dest), str(size_kib)], env)
    dirs = sorted({"/".join(path.strip("/").split("/")[:i]) for path in files
                   for i in range(1, len(path.strip("/").split("/")))})
    if dirs:
        _run(["mmd", "-i", str(dest), *(f"::/{d}" for d in dirs)], env)
    staging = dest.with_name(dest.name + ".files")
    staging.mkdir(exist_ok=True)
    try:
        for n, (path, content) in enumerate(sorted(files.items())):
            src = content if isinstance(content, Path) else staging / str(n)
            if not isinstance(content, Path):
                src.write_bytes(content)
            _run(["mcopy", "-i", str(dest), str(src), f"::/{path.strip('/')}"], env)  # times: SOURCE_DATE_EPOCH
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
    _run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-E", f"root_owner=0:0,hash_seed={hash_seed}",
          *(["-d", str(tree)] if tree else []), str(dest)], env)


def flashables(image: Path) -> None:
    """``IMAGE.xz`` (multithreaded xz; holes compress to nothing) and ``IMAGE.bmap`` (bmaptool's
    block map: ``bmaptool copy`` writes only the mapped blocks, and checks each range's sha256)."""
    with progress.step(f"Compressing {image.name} (xz)"):
        with (image.with_name(image.name + ".xz")).open("wb") as out:
            # -0: a third of -3's time for the same size (the squashfs inside is compressed already)
            proc = subprocess.run(["xz", "-T0", "-0", "-c", str(image)], stdout=out, stderr=subprocess.PIPE,
                                  text=False)
        if proc.returncode != 0:
            raise BasaltError(Problem(f"xz failed: {proc.stderr.decode(errors='replace').strip()}"))
    with progress.step(f"Block map of {image.name} (bmaptool)"):
        _run(["bmaptool", "-q", "create", "-o", str(image.with_name(image.name + ".bmap")), str(image)])
