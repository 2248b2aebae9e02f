"""Locks between builds that share a cache (flock on small files beside what they guard).

Two builds of one stage never race: the first to take a stage's lock builds it, a second waits
and then reuses the output. A build holds a shared lock on every stage output it reads until it
is done, so the cache's collection never removes a tree another build is reading. The locks are
released by the kernel when a process dies, so a killed build leaves none behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from builder import progress


class Lock:
    """One lock file, held through its own open file description (so two holders in one process
    exclude each other as two processes do)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def take(self, exclusive: bool, what: str = "") -> None:
        """Block until held; say what is awaited when another holder makes this wait."""
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if what:
                progress.log(f"waiting for another build of {what}")
            fcntl.flock(self.fd, mode)

    def try_take(self) -> bool:
        """Exclusive, only if nobody holds it now."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the description releases the lock
            self.fd = -1

    __del__ = close  # a holder dropped without close() lets go too


@contextlib.contextmanager
def held(path: Path, what: str = "") -> Iterator[Lock]:
    """An exclusive lock for the length of a ``with`` block."""
    lock = Lock(path)
    try:
        lock.take(exclusive=True, what=what)
        yield lock
    finally:
        lock.close()
