"""Grow the state partition to the end of its disk, once, on the first boot of a flashed image.

A raw image is small; the disk it is written to is not. When the state partition is the last on
a GPT or MBR disk and the disk has more than a few MiB past it: the table is rewritten with the partition
reaching the disk's end (agent/disk/partitions.py: backup first, the primary last, so an
interruption leaves a valid table), the kernel is told the new size (BLKPG, which works
while other partitions of the disk are mounted), and the mounted ext4 is grown online (the
ioctl resize2fs uses). Standard library only; ``needed()`` is cheap (sysfs reads) and is all a
boot costs once the partition has grown.
"""

from __future__ import annotations

import os
import struct

from agent import files

SECTOR = 512
MIB_SECTORS = 2048
BLKPG = 0x1269
BLKPG_RESIZE_PARTITION = 3
EXT4_IOC_RESIZE_FS = 0x40086610
MIN_GAIN_SECTORS = 8 * MIB_SECTORS  # do not bother for less than 8 MiB


def _value(path: str) -> int:
    return int(files.read_text(path, "-").strip())  # a missing file: ValueError, as a bad one


def needed(device: str, sysfs: str = "/sys/class/block") -> tuple[str, int, int] | None:
    """``(disk device, partition number, new last LBA)`` when ``device`` (/dev/vda5) should grow."""
    name = os.path.basename(device)
    part = os.path.join(sysfs, name)
    try:
        number = _value(os.path.join(part, "partition"))
        start, size = _value(os.path.join(part, "start")), _value(os.path.join(part, "size"))
        disk = os.path.basename(os.path.dirname(os.path.realpath(part)))
        disk_sectors = _value(os.path.join(sysfs, disk, "size"))
    except (OSError, ValueError):
        return None
    last_usable = disk_sectors - 34  # the backup GPT: 32 sectors of entries and its header
    new_last = last_usable - (last_usable + 1) % MIB_SECTORS  # end on a MiB boundary
    if new_last - (start + size - 1) < MIN_GAIN_SECTORS:
        return None
    return f"/dev/{disk}", number, new_last


def grow_gpt(disk: str, number: int, new_last: int) -> tuple[int, int]:
    """Rewrite ``disk``'s GPT so partition ``number`` ends at ``new_last``; ``(start, last)`` in sectors."""
    from dataclasses import replace

    from agent.disk import partitions
    with open(disk, "r+b") as f:
        total = f.seek(0, os.SEEK_END) // SECTOR
        try:
            guid, entries = partitions.read_gpt(f)
        except ValueError as exc:
            raise ValueError(f"{disk}: {exc}") from None
        mine = next((e for e in entries if e.number == number), None)
        if mine is None:
            raise ValueError(f"{disk}: no partition {number}")
        if any(e.last > mine.last for e in entries):
            raise ValueError(f"{disk}: partition {number} is not the last one")
        if new_last <= mine.last or new_last > total - 34:
            return mine.first, mine.last
        partitions.write_gpt(f, total, guid, [replace(e, last=new_last) if e is mine else e for e in entries])
        return mine.first, new_last


def grow_mbr(disk: str, number: int, new_last: int) -> tuple[int, int]:
    """The same on an MBR (a Raspberry Pi's card): primary partition ``number``'s sector count."""
    from agent.disk import partitions
    with open(disk, "r+b") as f:
        try:
            entries = {e.number: e for e in partitions.read_mbr(f)}
        except ValueError:
            entries = {}
        if number not in entries:
            raise ValueError(f"{disk}: no MBR primary partition {number}")
        start, sectors = entries[number].start, entries[number].sectors
        if any(e.start > start for e in entries.values()):
            raise ValueError(f"{disk}: partition {number} is not the last one")
        if new_last <= start + sectors - 1 or new_last - start + 1 > 0xFFFFFFFF:
            return start, start + sectors - 1
        f.seek(partitions.MBR_ENTRIES + 16 * (number - 1) + 12)
        f.write(struct.pack("<I", new_last - start + 1))
        f.flush()
        os.fsync(f.fileno())
        return start, new_last


def grow_table(disk: str, number: int, new_last: int) -> tuple[int, int]:
    """GPT or MBR, whichever the disk has."""
    with open(disk, "rb") as f:
        f.seek(SECTOR)
        gpt = f.read(8) == b"EFI PART"
    return (grow_gpt if gpt else grow_mbr)(disk, number, new_last)


def tell_kernel(disk: str, number: int, start: int, last: int) -> None:
    """The kernel's view of the partition follows the table (BLKPG: fine while it is mounted)."""
    import ctypes
    import fcntl
    part = ctypes.create_string_buffer(struct.pack("qqi64s64s4x", start * SECTOR, (last - start + 1) * SECTOR,
                                                   number, b"", b""))
    arg = struct.pack("iii4xQ", BLKPG_RESIZE_PARTITION, 0, ctypes.sizeof(part), ctypes.addressof(part))
    fd = os.open(disk, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKPG, arg)
    finally:
        os.close(fd)


def grow_ext4(mountpoint: str, device: str, sysfs: str = "/sys/class/block") -> int:
    """Grow the mounted ext4 at ``mountpoint`` to its partition's size; returns its size in MiB."""
    import fcntl
    block = os.statvfs(mountpoint).f_frsize
    sectors = int(_value(os.path.join(sysfs, os.path.basename(device), "size")))
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_RESIZE_FS, struct.pack("Q", sectors * SECTOR // block))
    finally:
        os.close(fd)
    return sectors * SECTOR >> 20


def grow(device: str, mountpoint: str) -> str | None:
    """Grow the state partition ``device`` (mounted at ``mountpoint``) if its disk has room;
    a line for the log, or None when there was nothing to do."""
    plan = needed(device)
    if plan is None:
        return None
    disk, number, new_last = plan
    start, last = grow_table(disk, number, new_last)
    tell_kernel(disk, number, start, last)
    mib = grow_ext4(mountpoint, device)
    return f"state partition {device} grown to {mib} MiB (the rest of {disk})"
