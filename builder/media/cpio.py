"""A deterministic ``newc`` cpio writer, as the kernel reads for an initramfs.

Written here rather than calling cpio(1) so that entries (device nodes,
owners, modes, mtimes) are set exactly, without privilege, and the archive is
byte-identical for identical inputs.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive, no leading slash
    mode: int  # full st_mode (type bits included)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(ino: int, entry: Entry, size: int) -> bytes:
    fields = [ino, entry.mode, 0, 0, 1, entry.mtime, size, 0, 0, entry.rdev[0], entry.rdev[1],
              len(entry.name) + 1, 0]
    return b"070701" + b"".join(f"{f:08x}".encode() for f in fields)


def write(out: BinaryIO, entries: list[Entry]) -> None:
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.name), start=1):
        name = entry.name.encode() + b"\0"
        head = _header(ino, entry, len(entry.data)) + name
        out.write(head + _pad(len(head)))
        out.write(entry.data + _pad(len(entry.data)))
    trailer = Entry("TRAILER!!!", 0)
    head = _header(0, trailer, 0) + b"TRAILER!!!\0"
    out.write(head + _pad(len(head)))


def directory(name: str, mode: int = 0o755, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFDIR | mode, mtime=mtime)


def file(name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFREG | mode, data, mtime=mtime)


def symlink(name: str, target: str, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)


def chardev(name: str, major: int, minor: int, mode: int = 0o600, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFCHR | mode, rdev=(major, minor), mtime=mtime)


def from_host(name: str, path: Path, mtime: int = 0) -> Entry:
    """A regular file copied from the host, keeping only its executable bit."""
    mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    return file(name, path.read_bytes(), mode, mtime)
