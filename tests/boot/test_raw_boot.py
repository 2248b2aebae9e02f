"""The A/B raw disk image, booted in QEMU (TCG) from slot A under SeaBIOS and OVMF, on a virtual
disk larger than the image (through a qcow2 overlay: the artifact is never written): the state
partition has grown to fill it, the slot and mode are reported, and /var survives a reboot.

Guests are bounded by timeouts and killed on exit; their network is restricted to the SSH forward."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from builder import pipeline, plan
from builder.qemu import READY, Guest

BOOT_TIMEOUT = 300
DISK_MIB = 2048


@pytest.fixture(scope="module")
def raw_with_key(key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x86_64-raw with a site config (baked onto the boot partition) that lets the test key in."""
    tmp = tmp_path_factory.mktemp("raw")
    config = tmp / "config.yaml"
    config.write_text(f"hostname: disk-node\nssh_authorized_keys:\n- {key.with_suffix('.pub').read_text().strip()}\n")
    return pipeline.build(plan.plan("x86_64-raw", str(config)), out=tmp / "out")


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_raw_image_boots_from_slot_a_and_grows_its_state_partition(
        raw_with_key: Path, key: Path, firmware: str, qemu_available: None) -> None:
    image = next(raw_with_key.glob("*.img"))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    with Guest(None, firmware=firmware, boot_disk=image, boot_disk_mib=DISK_MIB) as guest:
        m = guest.wait_for(READY.pattern + r" errors=(\d+)", BOOT_TIMEOUT)
        assert m.group(4) == "0", guest.tail()
        assert "state partition /dev/vda5 grown to" in guest.console()
        guest.wait_ssh(key)

        def sh(cmd: str) -> str:
            return guest.ssh(cmd, key)

        assert sh("cat /run/basalt/slot /run/basalt/mode") == "a\ninstalled"
        status = json.loads(sh("basalt status --json"))
        assert status["slot"] == "a" and status["slots"]["b"] == {"state": "empty"}
        assert status["slots"]["a"]["state"] == "active" and status["slots"]["a"]["image"] == "x86_64-raw"
        assert "slots: a active (x86_64-raw " in sh("basalt status")
        assert sh("hostname") == "disk-node"  # the site config, read from the boot partition
        assert re.search(r"^/dev/vda3 / squashfs ro", sh("cat /proc/mounts"), re.M)
        assert "basalt.slot=a basalt.mode=installed" in sh("cat /proc/cmdline")
        size_kb = int(sh("df -k /var | tail -1").split()[1])
        assert size_kb > (DISK_MIB - 512) * 1024 * 0.9, size_kb  # grown from 64 MiB to the rest of 2 GiB
        sh("echo kept-$((6*7)) > /var/lib/basalt/probe; sync")
        sh("(sleep 1; basalt reboot) >/dev/null 2>&1 &")
        guest.wait_for(r"basalt: reboot now", 120)
        guest.wait_for(READY, BOOT_TIMEOUT, start=guest.console().rindex("basalt: reboot now"))
        guest.wait_ssh(key)
        assert sh("cat /var/lib/basalt/probe") == "kept-42"
        assert "grown to" not in guest.console()[guest.console().rindex("basalt: reboot now"):]  # once only
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before  # booted through an overlay
