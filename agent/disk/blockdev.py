"""Writing an image onto a disk and reading it back: the one way `basalt install` (slot A and the
state and boot partitions), `basalt upgrade` (the other slot) and `inv flash` (a card, by its block
map) put bytes on a block device and prove they are there.

A copy hashes what it writes; runs of zeros are left to the disk (BLKZEROOUT) where it can, a
plain write where it cannot (a regular file standing in for a disk in tests). The read-back goes
past the page cache (fsync, BLKFLSBUF, POSIX_FADV_DONTNEED), so a disk that lost the data, or a
fake card smaller than it claims, is caught before anything depends on it. What is shown while
it runs (a bar, a log line every 10%) is the caller's: it is told each chunk's size.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

BLKFLSBUF = 0x1261
BLKZEROOUT = 0x127F
CHUNK = 1 << 20

OnChunk = Callable[[int], None]


def _quiet(n: int) -> None:
    pass


class Device:
    """The open disk ``f`` (unbuffered, read and write)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.zeroout = True

    def zero(self, offset: int, length: int) -> None:
        """``length`` zero bytes at ``offset``."""
        if self.zeroout:
            try:
                fcntl.ioctl(self.f.fileno(), BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                self.zeroout = False
        self.f.seek(offset)
        for done in range(0, length, CHUNK):
            self.f.write(bytes(min(CHUNK, length - done)))

    def copy(self, src: BinaryIO, offset: int, limit: int, on_write: OnChunk = _quiet) -> tuple[str, int]:
        """``src`` from where it stands, to ``offset``, up to its end or ``limit`` bytes, whichever is
        first: the sha256 of what was written, and how many bytes."""
        digest, pos, zero = hashlib.sha256(), offset, bytes(CHUNK)
        while pos < offset + limit and (chunk := src.read(min(CHUNK, offset + limit - pos))):
            digest.update(chunk)
            if chunk == zero[:len(chunk)]:
                self.zero(pos, len(chunk))
            else:
                self.f.seek(pos)
                self.f.write(chunk)
            pos += len(chunk)
            on_write(len(chunk))
        return digest.hexdigest(), pos - offset

    def drop_cache(self) -> None:
        """Everything written reaches the disk, and the next read comes from the disk, not memory."""
        self.f.flush()
        os.fsync(self.f.fileno())
        try:
            fcntl.ioctl(self.f.fileno(), BLKFLSBUF)
        except OSError:
            pass  # not a block device (a test's file): fadvise below is all there is
        os.posix_fadvise(self.f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def sha256(self, offset: int, length: int, on_read: OnChunk = _quiet) -> str:
        """The sha256 of ``length`` bytes from ``offset`` (fewer where the device ends)."""
        h, left = hashlib.sha256(), length
        self.f.seek(offset)
        while left > 0 and (data := self.f.read(min(CHUNK, left))):
            h.update(data)
            left -= len(data)
            on_read(len(data))
        return h.hexdigest()

    def reads_back(self, offset: int, length: int, digest: str, on_read: OnChunk = _quiet) -> bool:
        """Whether ``length`` bytes at ``offset``, read from the disk itself, have ``digest``."""
        self.drop_cache()
        return self.sha256(offset, length, on_read) == digest
