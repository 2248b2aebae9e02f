"""The test harness's snapshots (builder/vm/qemu.py, QEMU's savevm/loadvm), which give a test a fresh
node in seconds instead of a boot: a node restored from a snapshot is the node as it was then —
what was written before the snapshot is there, on disk and in memory, and what a previous user of
the node wrote after it is not — whether restored in the running QEMU or by a new QEMU started from
the snapshot kept in the qcow2 disk.

One boot (the kernel loaded directly: booting is not what this tests), bounded by timeouts, the
guest killed on exit; its network is restricted to the SSH forward."""

from __future__ import annotations

import time
from pathlib import Path

from builder.vm.bootfiles import qemu_img
from builder.vm.qemu import READY, Guest
from tests.conftest import Build

BOOT_TIMEOUT = 300
PROBE = "cat /var/lib/basalt/before /run/before; ls /var/lib/basalt/after /run/after 2>&1; true"
FRESH = ("before-disk\nbefore-ram\nls: /var/lib/basalt/after: No such file or directory\n"
         "ls: /run/after: No such file or directory")


def test_a_snapshot_restored_guest_is_a_fresh_node(build: Build, key: Path, tmp_path: Path,
                                                   qemu_available: None) -> None:
    out = build("x86_64-raw", f"ssh_authorized_keys: ['{key.with_suffix('.pub').read_text().strip()}']\n")
    disk = tmp_path / "node.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(next(out.glob("*.img")).resolve()), "-F", "raw", str(disk),
             "2048M")
    with Guest(None, boot_disk=disk, boot_disk_in_place=True, firmware="direct") as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_ssh(key)
        guest.ssh("echo before-disk > /var/lib/basalt/before; echo before-ram > /run/before; sync", key)
        guest.snapshot("fresh")
        for user in ("first", "second"):  # each use of the node leaves state behind; a restore drops it
            started = time.monotonic()
            guest.restore("fresh")
            assert guest.ssh(PROBE, key) == FRESH, user
            assert time.monotonic() - started < 60  # seconds, not a boot
            guest.ssh(f"echo {user} > /var/lib/basalt/after; echo {user} > /run/after; sync", key)
            assert guest.ssh("cat /var/lib/basalt/after /run/after", key) == f"{user}\n{user}"
    # A new QEMU, started from the snapshot the disk keeps: the same node, not a new boot.
    with Guest(None, boot_disk=disk, boot_disk_in_place=True, firmware="direct", loadvm="fresh") as guest:
        guest.wait_ssh(key)
        assert guest.ssh(PROBE, key) == FRESH  # /run/before too: memory restored, not a boot (/run is a tmpfs)
        assert READY.search(guest.console()) is None  # and no ready line on this console
