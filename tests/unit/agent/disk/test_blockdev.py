"""agent/disk/blockdev.py: the one copy-and-read-back used by install, upgrade and flash. A
regular file stands in for the disk (BLKZEROOUT and BLKFLSBUF then fall back, as they do on
any device without them); the boot tier writes real virtio disks through the same code."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from agent.disk import blockdev

MIB = 1 << 20


@pytest.fixture
def device(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "disk"
    path.write_bytes(b"\xff" * (8 * MIB))
    with open(path, "r+b", buffering=0) as f:
        yield blockdev.Device(f)


def test_copy_writes_data_and_zero_runs_and_hashes_what_it_wrote(device: blockdev.Device) -> None:
    data = os.urandom(MIB + 5) + bytes(2 * MIB) + b"tail"
    seen: list[int] = []
    digest, n = device.copy(io.BytesIO(data), MIB, 6 * MIB, seen.append)
    assert (digest, n, sum(seen)) == (hashlib.sha256(data).hexdigest(), len(data), len(data))
    assert device.zeroout is False  # a file has no BLKZEROOUT: the zeros were written
    device.f.seek(0)
    on_disk = device.f.read()
    assert on_disk[:MIB] == b"\xff" * MIB  # nothing before the offset touched
    assert on_disk[MIB:MIB + len(data)] == data
    assert on_disk[MIB + len(data):] == b"\xff" * (7 * MIB - len(data))  # nor after


def test_copy_stops_at_the_limit_and_leaves_the_rest_of_the_source(device: blockdev.Device) -> None:
    src = io.BytesIO(b"a" * (3 * MIB))
    digest, n = device.copy(src, 0, 2 * MIB + 7)
    assert (n, digest) == (2 * MIB + 7, hashlib.sha256(b"a" * (2 * MIB + 7)).hexdigest())
    assert src.read(1) == b"a"  # the caller can tell the image did not fit
    device.f.seek(2 * MIB + 7)
    assert device.f.read(1) == b"\xff"


def test_read_back_sees_the_disk_not_the_copy(device: blockdev.Device, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    digest, n = device.copy(io.BytesIO(data), 0, len(data))
    assert device.reads_back(0, n, digest)
    with open(tmp_path / "disk", "r+b") as other:  # the disk changes under the writer: a failing disk
        other.seek(2 * MIB)
        other.write(b"\0")
    assert not device.reads_back(0, n, digest)
    assert device.sha256(7 * MIB, 4 * MIB) == hashlib.sha256(b"\xff" * MIB).hexdigest()  # short at the end
