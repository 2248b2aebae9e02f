"""``inv flash``: write a disk artifact onto a card or disk by its block map, as ``bmaptool copy``
does: only the mapped ranges of ``.img.bmap`` are written (from the ``.img``, or streamed out of
the ``.img.xz``), each range's sha256 is checked against the map on the way in, and after a sync
every range is read back from the device (past the page cache) and checked again.

Refused before anything is written: a partition instead of a disk, the disk holding this host's
root filesystem, a disk with anything mounted, swapped or held on it, a disk smaller than the
image, (unless ``force``) a disk that is not removable, a name in /dev that does not exist (a
typo: never made into a file in RAM), a regular file in /dev, a link to anything but a block
device, and a block map whose sizes or ranges no image has. A regular file elsewhere stands in
for a device (what the tests write to); it is created or extended to the image's size, and a
file made here is removed again if the flash fails.
"""

from __future__ import annotations

import lzma
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.disk import blockdev, targets
from agent.errors import BasaltError, Problem
from builder import progress


@dataclass(frozen=True)
class BlockMap:
    image_size: int
    block_size: int
    ranges: tuple[tuple[int, int, str], ...]  # (first block, last block, sha256)

    @property
    def mapped_bytes(self) -> int:
        return sum(min((last + 1) * self.block_size, self.image_size) - first * self.block_size
                   for first, last, _ in self.ranges)


def read_bmap(path: Path) -> BlockMap:
    try:
        root = ET.parse(path).getroot()
        if root.tag != "bmap" or not root.get("version", "").startswith("2."):
            raise ValueError(f"not a version 2 block map (version {root.get('version')})")
        if (root.findtext("ChecksumType") or "").strip() != "sha256":
            raise ValueError("only sha256 block maps are read")
        ranges = []
        for r in root.iter("Range"):
            first, _, last = (r.text or "").strip().partition("-")
            ranges.append((int(first), int(last or first), r.get("chksum", "")))
        bmap = BlockMap(int((root.findtext("ImageSize") or "").strip()),
                        int((root.findtext("BlockSize") or "").strip()), tuple(ranges))
        if not 0 < bmap.image_size <= MAX_IMAGE:
            raise ValueError(f"an image size of {bmap.image_size} bytes is not one a card or disk has")
        if bmap.block_size not in (512 << n for n in range(12)):
            raise ValueError(f"a block size of {bmap.block_size} bytes is not a power of two from 512 to 1 MiB")
        count = -(-bmap.image_size // bmap.block_size)
        for low, high, digest in bmap.ranges:
            if not 0 <= low <= high < count:
                raise ValueError(f"the range {low}-{high} is not within the image's {count} blocks")
            if digest and (len(digest) != 64 or digest.strip("0123456789abcdef")):
                raise ValueError(f"the range {low}-{high} has no sha256 ({digest[:80]!r})")
        return bmap
    except (OSError, ET.ParseError, ValueError) as exc:
        raise BasaltError(Problem(f"{path}: {exc}", hint="rebuild the image: every disk output writes its .bmap")) \
            from None


MAX_IMAGE = 16 << 40  # 16 TiB: past any card or disk an edge image is flashed to


def refuse(device: str, message: str, hint: str) -> BasaltError:
    return BasaltError(Problem(f"{device}: {message}; nothing was written", hint=hint))


# How inv flash words each refusal (agent/disk/targets.py makes them, as for basalt install).
WORDS = targets.Words(
    not_a_disk=("is not a disk", "lsblk lists the disks"),
    partition=("is a partition of /dev/{owner}", "flash the whole disk: --device /dev/{owner}"),
    missing=("is not a disk", "lsblk lists the disks"),
    booted=("it holds this machine's root filesystem ({booted})",
            "pick the card's device: lsblk shows it (often /dev/sdX or /dev/mmcblkN)"),
    readonly=("is read-only", "check the card's write-protect switch"),
    busy=("is in use: {busy}", "unmount it first (umount {real}*)"),
    too_small=("is too small: {have_mib} MiB, the image is {need_mib} MiB", "use a larger card"),
    removable=("is not a removable disk ({model}, {size})",
               "--force writes to it anyway, if it really is the card or disk to erase"),
)


def check_device(device: str, bmap: BlockMap, host: targets.Host, force: bool = False) -> None:
    """Every refusal that applies to ``device`` (a block device) for an image of ``bmap``."""
    target = targets.whole_disk(device, host, WORDS, refuse)
    targets.fits(target, bmap.image_size, True, force, WORDS, refuse)


def host_for_flash() -> targets.Host:
    """This machine, seen as the installer sees a node: what is mounted, and where / lives."""
    host = targets.Host.running()
    host.boot_devices = [src for src, target in host.mounts if target == "/" and src.startswith("/dev/")]
    return host


def source(image: Path) -> tuple[BinaryIO, Path]:
    """The image to read (the .img, else its .img.xz, streamed) and its block map."""
    xz = image.with_name(image.name + ".xz")
    bmap = image.with_name(image.name + ".bmap")
    if not bmap.is_file():
        raise BasaltError(Problem(f"{bmap}: no block map beside the image", hint="rebuild it: inv build --image …"))
    if image.is_file():
        return image.open("rb"), bmap
    if xz.is_file():
        return lzma.open(xz, "rb"), bmap  # type: ignore[return-value]
    raise BasaltError(Problem(f"{image}: not built (nor {xz.name})", hint="inv build --image … first"))


def flash(image: Path, device: str, force: bool = False, host: targets.Host | None = None) -> dict[str, int]:
    """Write ``image`` to ``device`` by its block map and verify it; bytes written and checked."""
    src, bmap_path = source(image)
    bmap = read_bmap(bmap_path)
    with src:
        fd, created = open_target(device, bmap, host, force)
        try:
            write(fd, src, image, device, bmap)
        except BaseException:
            if created:
                os.unlink(device)  # nothing left that looks like a flashed card
            raise
    return {"written": bmap.mapped_bytes, "image_size": bmap.image_size}


def open_target(device: str, bmap: BlockMap, host: targets.Host | None, force: bool) -> tuple[int, bool]:
    """The device (or the regular file standing in for one) opened for writing, after every
    refusal; and whether the file was made here. A name in /dev that is not there is a typo, not
    a file to make (it would be a file in RAM, "written and verified"); a link is followed only to
    a block device (/dev/disk/by-id/...), and a regular file is never written through a link."""
    import stat
    path = device
    if os.path.islink(device):
        path = os.path.realpath(device)
        if not os.path.exists(path) or not stat.S_ISBLK(os.stat(path).st_mode):
            raise refuse(device, f"is a link to {path}, which is not a block device", "lsblk lists the disks")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.realpath(os.path.dirname(path) or ".").startswith("/dev"):
            raise refuse(device, "no such device", "lsblk lists the disks: check the name") from None
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), True
    if stat.S_ISBLK(mode):
        check_device(path, bmap, host or host_for_flash(), force)
        return os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC), False
    if not stat.S_ISREG(mode):
        raise refuse(device, "is neither a block device nor a regular file", "lsblk lists the disks")
    if os.path.realpath(path).startswith("/dev/"):
        raise refuse(device, "is a regular file in /dev, not a device (left by an earlier typo?)",
                     f"lsblk lists the disks; remove {device} if nothing needs it")
    return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC), False


def write(fd: int, src: BinaryIO, image: Path, device: str, bmap: BlockMap) -> None:
    """Every mapped range of ``src`` onto ``fd``, checked on the way in, then read back."""
    import stat
    with os.fdopen(fd, "r+b", buffering=0) as out:
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size < bmap.image_size:
            out.truncate(bmap.image_size)
        dev = blockdev.Device(out)
        bar = progress.Bar(f"Writing {image.name} to {device}", bmap.mapped_bytes)
        for first, last, digest in bmap.ranges:
            start, end = first * bmap.block_size, min((last + 1) * bmap.block_size, bmap.image_size)
            src.seek(start)
            actual, copied = dev.copy(src, start, end - start, bar.update)
            if copied < end - start:
                raise BasaltError(Problem(f"{image}: ends before block {last} of its block map"))
            if digest and actual != digest:
                raise BasaltError(Problem(f"{image}: blocks {first}-{last} do not match its block map "
                                          "(a corrupt or changed image); the device is incomplete",
                                          hint="rebuild or download the image again, then flash again"))
        bar.close()
        with progress.step("Syncing"):
            dev.drop_cache()
        verify(dev, bmap, device)


def verify(dev: blockdev.Device, bmap: BlockMap, device: str) -> None:
    """Read every mapped range back from the device (not the page cache) and check its sha256."""
    bar = progress.Bar(f"Verifying {device}", bmap.mapped_bytes)
    for first, last, digest in bmap.ranges:
        start, end = first * bmap.block_size, min((last + 1) * bmap.block_size, bmap.image_size)
        if digest and dev.sha256(start, end - start, bar.update) != digest:
            raise BasaltError(Problem(f"{device}: blocks {first}-{last} read back differently from what was written",
                                      hint="the card may be failing or fake (smaller than it claims); try another"))
    bar.close()
