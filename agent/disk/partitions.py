"""Partition tables as data, and written by this module alone: by the builder into an image file,
by ``basalt install`` onto a disk, by the state partition's first-boot growth. One copy of the
GPT (with its protective MBR), the MBR (the Raspberry Pi's card) and GRUB's BIOS embedding.

Standard library only: it runs on the node. Everything works on an open file (an image or a
block device) with ``seek``/``write``; nothing here mounts, loops or asks the kernel anything.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from agent import layout
from agent.errors import BasaltError, Problem

SECTOR = 512
MIB = 1 << 20
MIB_SECTORS = MIB // SECTOR
# GPT partition type GUIDs, and the MBR type codes they map to on a "dos" table.
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # a FAT data partition (the Pi's boot partition)
# 0x0C is FAT32 (LBA): the Raspberry Pi's boot ROM does not take 0xEF for its boot partition.
MBR_TYPES = {ESP: 0xEF, LINUX_DATA: 0x83, BASIC_DATA: 0x0C}

GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_SIZE = 92
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_TABLE_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32
MBR_BOOT_CODE = 440  # the boot loader's bytes, kept when a table is written; then the disk signature
MBR_ENTRIES = 446


@dataclass(frozen=True)
class Partition:
    name: str  # the GPT partition name (how the initramfs finds a slot); on MBR, for messages only
    type: str  # a GPT type GUID (MBR_TYPES maps it for an MBR table)
    size_mib: int  # 0: the rest of the disk (the last partition only)
    content: object = None  # what the writer puts there (the builder: a Path); None: left empty


@dataclass(frozen=True)
class Disk:
    table: str  # "gpt" or "dos" (MBR)
    partitions: tuple[Partition, ...]
    seed: str  # makes the disk and partition UUIDs reproducible: the same seed, the same ids

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
    out, start = [], MIB_SECTORS
    end = size_mib * MIB_SECTORS - MIB_SECTORS  # the GPT backup header and table live in the last MiB
    for n, p in enumerate(disk.partitions, 1):
        sectors = p.size_mib * MIB_SECTORS if p.size_mib else end - start
        if p.size_mib == 0 and n != len(disk.partitions):
            raise BasaltError(Problem(f"partition {p.name}: only the last partition may take the rest of the disk"))
        if sectors <= 0 or start + sectors > end:
            raise BasaltError(Problem(f"partition {p.name} does not fit a {size_mib} MiB disk",
                                      hint=f"the layout needs at least {disk.min_size_mib()} MiB"))
        out.append(Placed(p, n, start, sectors))
        start += sectors
    return out


def write_table(f: BinaryIO, disk: Disk, placed: list[Placed], total_sectors: int) -> None:
    """Write ``disk``'s partition table (as ``placed``) on the open image or device ``f``."""
    if disk.table == "gpt":
        entries = [GptEntry(pl.number, pl.partition.type, disk.uuid(pl.partition.name), pl.start,
                            pl.start + pl.sectors - 1, 0, pl.partition.name) for pl in placed]
        write_gpt(f, total_sectors, disk.uuid("disk"), entries)
    elif disk.table == "dos":
        write_mbr(f, int(disk.uuid("disk")[:8], 16),
                  [(pl.start, pl.sectors, MBR_TYPES[pl.partition.type], pl.number == 1) for pl in placed])
    else:
        raise BasaltError(Problem(f"partition table {disk.table!r}: not gpt or dos"))


# --- GPT ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GptEntry:
    number: int  # 1-based slot in the entry array
    type: str
    uuid: str
    first: int  # LBA
    last: int  # LBA, inclusive
    attributes: int
    name: str


def _pack_entry(e: GptEntry) -> bytes:
    name = e.name.encode("utf-16-le")
    if len(name) > 72:
        raise BasaltError(Problem(f"GPT partition name {e.name!r} is longer than 36 characters"))
    return struct.pack("<16s16sQQQ72s", uuid.UUID(e.type).bytes_le, uuid.UUID(e.uuid).bytes_le,
                       e.first, e.last, e.attributes, name)


def _header(total: int, disk_guid: str, entries_crc: int, backup: bool) -> bytes:
    my_lba, other_lba = (total - 1, 1) if backup else (1, total - 1)
    entries_lba = total - 1 - GPT_TABLE_SECTORS if backup else 2
    h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", GPT_SIGNATURE, GPT_REVISION, GPT_HEADER_SIZE, 0, 0,
                              my_lba, other_lba, 2 + GPT_TABLE_SECTORS, total - 2 - GPT_TABLE_SECTORS,
                              uuid.UUID(disk_guid).bytes_le, entries_lba, GPT_ENTRIES, GPT_ENTRY_SIZE,
                              entries_crc))
    struct.pack_into("<I", h, 16, zlib.crc32(bytes(h)))
    return bytes(h) + bytes(SECTOR - len(h))


def _pwrite(f: BinaryIO, data: bytes, offset: int) -> None:
    f.seek(offset)
    f.write(data)


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def write_gpt(f: BinaryIO, total: int, disk_guid: str, entries: list[GptEntry]) -> None:
    """A GPT on a disk of ``total`` sectors: the backup (entries, header) first and the primary
    last, so an interruption leaves one valid table; then the protective MBR, whose boot code
    (a BIOS boot loader's) is kept."""
    table = bytearray(GPT_ENTRIES * GPT_ENTRY_SIZE)
    for e in entries:
        if not 1 <= e.number <= GPT_ENTRIES:
            raise BasaltError(Problem(f"GPT partition number {e.number} out of range"))
        if e.first < 2 + GPT_TABLE_SECTORS or e.last > total - 2 - GPT_TABLE_SECTORS or e.last < e.first:
            raise BasaltError(Problem(f"GPT partition {e.name!r} ({e.first}-{e.last}) is outside the disk"))
        table[(e.number - 1) * GPT_ENTRY_SIZE:e.number * GPT_ENTRY_SIZE] = _pack_entry(e)
    crc = zlib.crc32(bytes(table))
    _pwrite(f, bytes(table), (total - 1 - GPT_TABLE_SECTORS) * SECTOR)
    _pwrite(f, _header(total, disk_guid, crc, backup=True), (total - 1) * SECTOR)
    _sync(f)
    _pwrite(f, bytes(table), 2 * SECTOR)
    _pwrite(f, _header(total, disk_guid, crc, backup=False), SECTOR)
    protective = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, min(total - 1, 0xFFFFFFFF))
    _write_mbr_entries(f, [protective])
    _sync(f)


def read_gpt(f: BinaryIO) -> tuple[str, list[GptEntry]]:
    """The primary GPT of ``f``: (disk GUID, the used entries), checksums verified."""
    f.seek(SECTOR)
    header = f.read(SECTOR)
    if header[:8] != GPT_SIGNATURE:
        raise ValueError("no GPT")
    size = struct.unpack_from("<I", header, 12)[0]
    check = bytearray(header[:size])
    struct.pack_into("<I", check, 16, 0)
    if zlib.crc32(bytes(check)) != struct.unpack_from("<I", header, 16)[0]:
        raise ValueError("the GPT header fails its checksum")
    disk_guid = str(uuid.UUID(bytes_le=header[56:72])).upper()
    entries_lba, count, entry_size, crc = struct.unpack_from("<QIII", header, 72)
    f.seek(entries_lba * SECTOR)
    table = f.read(count * entry_size)
    if zlib.crc32(table) != crc:
        raise ValueError("the GPT entries fail their checksum")
    out = []
    for i in range(count):
        raw = table[i * entry_size:i * entry_size + 128]
        if raw[:16] == bytes(16):
            continue
        type_le, uuid_le, first, last, attrs, name = struct.unpack("<16s16sQQQ72s", raw)
        out.append(GptEntry(i + 1, str(uuid.UUID(bytes_le=type_le)).upper(), str(uuid.UUID(bytes_le=uuid_le)).upper(),
                            first, last, attrs, name.decode("utf-16-le").rstrip("\0")))
    return disk_guid, out


# --- MBR ---------------------------------------------------------------------------------------

def _write_mbr_entries(f: BinaryIO, records: list[bytes], disk_id: int | None = None) -> None:
    f.seek(0)
    mbr = bytearray(f.read(SECTOR).ljust(SECTOR, b"\0"))
    if disk_id is not None:
        struct.pack_into("<IH", mbr, MBR_BOOT_CODE, disk_id, 0)
    mbr[MBR_ENTRIES:MBR_ENTRIES + 64] = b"".join(records).ljust(64, b"\0")
    mbr[510:512] = b"\x55\xaa"
    _pwrite(f, bytes(mbr), 0)


@dataclass(frozen=True)
class MbrEntry:
    number: int  # 1-4
    code: int  # the type code (0x0C FAT32 LBA, 0x83 Linux, ...)
    start: int  # in sectors
    sectors: int


FAT_CODES = (0x0B, 0x0C, 0xEF)  # FAT32 (CHS, LBA), an EFI system partition


def read_mbr(f: BinaryIO) -> list[MbrEntry]:
    """The MBR's primary partitions in use (ValueError when the disk has no MBR signature)."""
    f.seek(0)
    mbr = f.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise ValueError("no MBR")
    out = []
    for i in range(4):
        _, _, code, _, start, sectors = struct.unpack_from("<B3sB3sII", mbr, MBR_ENTRIES + 16 * i)
        if sectors:
            out.append(MbrEntry(i + 1, code, start, sectors))
    return out


def boot_partition(f: BinaryIO) -> int | None:
    """The byte offset of a Basalt disk's boot partition: the GPT partition named
    ``layout.BOOT_LABEL``, or on an MBR disk (the Raspberry Pi's card) its FAT partition; None
    when there is none."""
    try:
        _, entries = read_gpt(f)
    except ValueError:
        entries = []
    for entry in entries:
        if entry.name == layout.BOOT_LABEL:
            return entry.first * SECTOR
    if entries:
        return None
    try:
        return next((e.start * SECTOR for e in read_mbr(f) if e.code in FAT_CODES), None)
    except ValueError:
        return None


def write_mbr(f: BinaryIO, disk_id: int, parts: list[tuple[int, int, int, bool]]) -> None:
    """An MBR table: (start, sectors, type code, bootable) per primary partition (at most 4),
    addressed by LBA only (CHS fields at their 'use LBA' maximum); the boot code is kept."""
    if len(parts) > 4:
        raise BasaltError(Problem(f"an MBR holds 4 primary partitions, not {len(parts)}",
                                  hint="use a gpt table, or fewer partitions"))
    records = []
    for start, sectors, code, bootable in parts:
        if start + sectors > 0xFFFFFFFF:
            raise BasaltError(Problem("an MBR partition cannot end past 2 TiB", hint="use a gpt table"))
        records.append(struct.pack("<B3sB3sII", 0x80 if bootable else 0, b"\xfe\xff\xff", code, b"\xfe\xff\xff",
                                   start, sectors))
    _write_mbr_entries(f, records, disk_id)
    _sync(f)


# --- GRUB for BIOS -----------------------------------------------------------------------------

# i386-pc boot.img (the MBR's boot code) and diskboot.img (core.img's first sector).
BOOT_KERNEL_SECTOR = 0x5C  # u64: the LBA of core.img's first sector
BOOT_DRIVE_CHECK = 0x66  # a short jmp replaced by two nops on hard disks (BIOSes that pass a bad drive)
BLOCKLIST = 512 - 12  # in core.img's first sector: start (u64), length (u16), segment (u16)
CORE_SEGMENT = 0x820  # where the rest of core.img is loaded (0x800 + one sector)


def embed_bios(f: BinaryIO, boot_img: bytes, core_img: bytes, core_lba: int, room_sectors: int) -> None:
    """Install GRUB for BIOS, as grub-bios-setup does on a GPT disk: boot.img's code into the MBR
    (the disk signature and partition table kept), core.img into the BIOS boot partition at
    ``core_lba``, boot.img pointed at core.img's first sector and that sector's blocklist at the rest."""
    boot, core = bytearray(boot_img), bytearray(core_img)
    if len(boot) != SECTOR:
        raise BasaltError(Problem("GRUB's boot.img is not 512 bytes"))
    core += b"\0" * (-len(core) % SECTOR)
    sectors = len(core) // SECTOR
    if sectors > room_sectors:
        raise BasaltError(Problem(f"GRUB's core image ({sectors} sectors) does not fit the BIOS boot partition "
                                  f"({room_sectors} sectors)", hint="make the bios_boot partition larger"))
    struct.pack_into("<Q", boot, BOOT_KERNEL_SECTOR, core_lba)
    boot[BOOT_DRIVE_CHECK:BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    struct.pack_into("<QHH", core, BLOCKLIST, core_lba + 1, sectors - 1, CORE_SEGMENT)
    f.seek(0)
    mbr = bytearray(f.read(SECTOR).ljust(SECTOR, b"\0"))
    mbr[:MBR_BOOT_CODE] = boot[:MBR_BOOT_CODE]
    _pwrite(f, bytes(core), core_lba * SECTOR)
    _pwrite(f, bytes(mbr), 0)
    _sync(f)
