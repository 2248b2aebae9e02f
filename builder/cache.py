"""The stage cache's size on disk: bounded, the outputs used least recently collected first.

Each stage output (``stages/<id>/``) records its last use as the modification time of its
``stage.json`` (the pipeline touches it on every hit and build) and its size in ``.size`` (measured
once: an output never changes after it is published). ``prune`` removes the least recently used
outputs until the cache fits ``BASALT_CACHE_MAX`` and the disk keeps ``BASALT_CACHE_FREE`` free,
never one a build holds (its lock is taken first, as the per-image history's collection does), and
removes what a killed build left half-written. Every build prunes when it is done; ``./inv cache``
shows the cache and prunes it by hand; ``./inv test`` prunes before the suite and refuses to start
on a disk that cannot hold a run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BasaltError
from builder.locks import Lock

GIB = 1 << 30
MAX_DEFAULT = 40 * GIB  # a full test run's outputs fit (docs/testing.md), with room for the user's
FREE_DEFAULT = 8 * GIB  # what a build writes beside the cache before its outputs are published
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.IGNORECASE)


def parse_size(text: str, name: str) -> int:
    """``40G``, ``512M``, ``1.5T`` or bytes."""
    m = SIZE.fullmatch(text.strip())
    if not m:
        raise BasaltError.simple(f"{name}: {text!r} is not a size", hint="e.g. 40G, 512M or a number of bytes")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": GIB, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def limits() -> tuple[int, int]:
    """(largest total size, free space to keep on the disk), from the environment or the defaults."""
    size = os.environ.get("BASALT_CACHE_MAX", "")
    free = os.environ.get("BASALT_CACHE_FREE", "")
    return (parse_size(size, "BASALT_CACHE_MAX") if size else MAX_DEFAULT,
            parse_size(free, "BASALT_CACHE_FREE") if free else FREE_DEFAULT)


@dataclass(frozen=True)
class Entry:
    path: Path
    used: float  # seconds since the epoch
    size: int  # bytes on disk


def tree_size(path: Path) -> int:
    """Bytes a tree takes on disk (blocks, so a sparse image counts what it holds), links not followed.
    Builds run at once: what another one removes or renames while this walks is not counted."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def entry_size(path: Path) -> int:
    """An output's size, memoised in its ``.size`` (another build may be writing or removing it)."""
    marker = path / ".size"
    try:
        return int(marker.read_text())
    except (OSError, ValueError):
        size = tree_size(path)
        tmp = path / f".size.{os.getpid()}.tmp"
        try:
            tmp.write_text(str(size))
            os.replace(tmp, marker)
        except OSError:  # collected meanwhile by another build: the size is still right for this pass
            with contextlib.suppress(OSError):
                tmp.unlink()
        return size


def touch(path: Path) -> None:
    """Record a use of the stage output at ``path`` (its ``stage.json``'s time)."""
    try:
        os.utime(path / "stage.json")
    except FileNotFoundError:
        pass  # collected meanwhile: the caller holds its lock, so this is a removed volatile output


def entries(stages_dir: Path) -> list[Entry]:
    """The published outputs, least recently used first."""
    found = []
    if not stages_dir.is_dir():
        return []
    for path in stages_dir.iterdir():
        try:
            used = (path / "stage.json").stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.append(Entry(path, used, entry_size(path)))
    return sorted(found, key=lambda e: e.used)


def _dead_leftovers(stages_dir: Path) -> list[Path]:
    """Half-written outputs of builds that are no longer running (``tmp-STAGE-PID-N``)."""
    dead = []
    for path in stages_dir.glob("tmp-*"):
        parts = path.name.rsplit("-", 2)
        if len(parts) == 3 and parts[1].isdigit() and not Path(f"/proc/{parts[1]}").exists():
            dead.append(path)
    return dead


def free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class Pruned:
    removed: int
    freed: int
    kept: int
    size: int  # what the cache's outputs take now


def prune(cache: Path, max_bytes: int | None = None, keep_free: int | None = None) -> Pruned:
    """Remove least recently used outputs until the cache is at most ``max_bytes`` and the disk
    has ``keep_free`` bytes free (or nothing more may go); outputs a build holds are skipped."""
    default_max, default_free = limits()
    max_bytes = default_max if max_bytes is None else max_bytes
    keep_free = default_free if keep_free is None else keep_free
    stages_dir = cache / "stages"
    freed = removed = 0
    for path in _dead_leftovers(stages_dir) if stages_dir.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
    found = entries(stages_dir)
    size = sum(e.size for e in found)
    kept = 0
    for e in found:
        if size <= max_bytes and free_bytes(stages_dir) >= keep_free:
            kept += 1
            continue
        lock = Lock(cache / "stage-locks" / f"{e.path.name}.lock")
        try:
            if not lock.try_take():  # a build reads or writes it now
                kept += 1
                continue
            # stage.json first: a half-removed tree is never taken for a published output
            (e.path / "stage.json").unlink(missing_ok=True)
            shutil.rmtree(e.path, ignore_errors=True)
        finally:
            lock.close()
        size -= e.size
        freed += e.size
        removed += 1
    return Pruned(removed, freed, kept, size)


def describe(cache: Path) -> str:
    found = entries(cache / "stages")
    max_bytes, keep_free = limits()
    total = sum(e.size for e in found)
    return (f"{cache}: {len(found)} stage outputs, {total / GIB:.1f} GiB (at most {max_bytes / GIB:.1f} GiB, "
            f"keeping {keep_free / GIB:.1f} GiB free; {free_bytes(cache) / GIB:.1f} GiB free now)")
