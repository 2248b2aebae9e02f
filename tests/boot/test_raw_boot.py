"""The A/B raw disk image, booted in QEMU (TCG) from slot A under SeaBIOS and OVMF, on a virtual
disk larger than the image (through a qcow2 overlay: the artifact is never written): the state
partition has grown to fill it, the slot and mode are reported, and /var survives a reboot.

Guests are bounded by timeouts and killed on exit; their network is restricted to the SSH forward."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest

from builder import pipeline, plan
from builder.vm.qemu import READY, Guest
from tests.initsh import init_functions

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
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert m.group(4) == "0", guest.tail()
        guest.wait_for("state partition /dev/vda5 grown to", 120)  # after ready, in a child of PID 1
        guest.wait_ssh(key)

        def sh(cmd: str) -> str:
            return guest.ssh(cmd, key)

        assert sh("cat /run/basalt/slot /run/basalt/mode") == "a\ninstalled"
        # The initramfs finds the slot and the state partition beside its boot partition by GPT
        # name (not number: the BIOS boot partition comes first), in this guest's real sysfs, and
        # reads the state partition's label from the real device.
        beside = shlex.quote(init_functions("partition_numbered", "partition_beside", "ext4_label") +
                             'partition_beside /dev/vda2 BASALT_A 2; partition_beside /dev/vda2 BASALT_STATE 4; '
                             'x=$(ext4_label /dev/vda5); echo "$x"')
        assert sh(f"busybox sh -c {beside}") == "/dev/vda3\n/dev/vda5\nBASALT_STATE"
        assert sh("grep ' /run/basalt/state ' /proc/mounts | cut -d' ' -f1") == "/dev/vda5"
        status = json.loads(sh("basalt status --json"))
        assert status["slot"] == "a" and status["slots"]["b"] == {"state": "empty"}
        assert status["slots"]["a"]["state"] == "active" and status["slots"]["a"]["image"] == "x86_64-raw"
        assert "slots: a active (x86_64-raw " in sh("basalt status")
        assert sh("hostname") == "disk-node"  # the site config, read from the boot partition
        assert re.search(r"^/dev/vda3 / squashfs ro", sh("cat /proc/mounts"), re.M)
        assert "basalt.slot=a basalt.mode=installed" in sh("cat /proc/cmdline")
        # The i6300esb QEMU gives x86 guests, armed by PID 1 and fed (a committed boot: no loop limit).
        assert sh("cd /sys/class/watchdog/watchdog0 && cat identity state timeout") == "i6300ESB timer\nactive\n60"
        assert "basalt: watchdog (i6300ESB timer) armed: 60s\n" in guest.console()
        # The growth ran in a child forked after ready: its partition code's ctypes is not in PID 1.
        assert "_ctypes" not in sh("cat /proc/1/maps")
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


def test_a_config_dropped_on_the_boot_partition_is_a_source(raw_with_key: Path, key: Path, tmp_path: Path,
                                                            qemu_available: None) -> None:
    """What a laptop does to a flashed card or disk: files put on its FAT partition. A valid
    basalt-config.yaml is applied; a NoCloud user-data beside it with a mistake is reported with
    its file and line, as any source is, and left out."""
    import subprocess
    image = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(next(raw_with_key.glob("*.img"))), str(image)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    esp = next(p["start"] for p in table if p["name"] == "BASALT_BOOT") * 512
    dropped = {"basalt-config.yaml": "hostname: from-laptop\n", "user-data": "#cloud-config\ntimezone: 42\n"}
    for name, text in dropped.items():
        (tmp_path / name).write_text(text)
        subprocess.run(["mcopy", "-i", f"{image}@@{esp}", str(tmp_path / name), f"::/{name}"], check=True,
                       env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    with Guest(None, boot_disk=image, firmware="direct") as guest:  # the disk's own kernel and command line
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_ssh(key)
        assert guest.ssh("hostname", key) == "from-laptop"
        status = json.loads(guest.ssh("basalt status --json", key))
        assert "/run/basalt/medium/basalt-config.yaml" in status["config_sources"]
        assert any(e.startswith("config: /run/basalt/medium/user-data:2: timezone: ") for e in status["errors"]), \
            status["errors"]
        shown = guest.ssh("basalt config show", key, check=False)  # exits 1: a source was left out
        assert "hostname = 'from-laptop'    # /run/basalt/medium/basalt-config.yaml" in shown
        assert "left out: /run/basalt/medium/user-data:2: timezone: '42' is not valid here" in shown
