"""``basalt install`` in QEMU (TCG): an unattended install from the ISO with a NoCloud seed onto a
blank virtual disk, which powers the VM off; the disk then boots alone (SeaBIOS and OVMF) to the
ready line, lets the seed's key in over SSH, and keeps /var across a reboot. And every refusal,
with its message, leaving the disks it refused byte for byte as they were.

Guests are bounded by timeouts and killed on exit; their network is restricted to the SSH forward."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from builder.vm import seed
from builder.vm.qemu import READY, Guest, install_unattended

# One worker runs this module: its tests share one unattended install (a QEMU run of minutes).
pytestmark = pytest.mark.xdist_group("install")
BOOT_TIMEOUT = 300
INSTALL_TIMEOUT = 600
DISK_GIB = 4


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def blank(path: Path, mib: int) -> Path:
    with path.open("wb") as f:
        f.truncate(mib << 20)
    return path


@pytest.fixture(scope="module")
def installed(built_iso: Path, key: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A blank disk after an unattended install from the ISO (k3OS's install: keys in a NoCloud
    seed); the console of the install."""
    tmp = tmp_path_factory.mktemp("install")
    user_data = tmp / "user-data"
    user_data.write_text(f"""\
hostname: installed-node
ssh_authorized_keys:
- {key.with_suffix('.pub').read_text().strip()}
k3os:
  install:
    device: /dev/vda
    silent: true
    power_off: true
""")
    target = blank(tmp / "disk.img", DISK_GIB << 10)
    done = install_unattended(next(built_iso.glob("*.iso")), target, user_data, INSTALL_TIMEOUT, firmware="direct")
    assert done["device"] == "/dev/vda" and done["started"]
    return target, done["console"]


def test_unattended_install_powers_off_having_written_the_layout(installed: tuple[Path, str]) -> None:
    target, console = installed
    assert "basalt: unattended install: starting basalt install" in console
    assert re.search(r"slot A \(BASALT_A\): \d+ MiB written and verified", console), console[-3000:]
    assert "basalt: poweroff now" in console
    assert re.search(r"basalt: ssh host key: ED25519 SHA256:\S+", console)  # the live system's, copied over
    table = json.loads(subprocess.run(["sfdisk", "-J", str(target)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert [p["name"] for p in table["partitions"]] == ["BIOS_BOOT", "BASALT_BOOT", "BASALT_A", "BASALT_B",
                                                         "BASALT_STATE"]
    assert all(p["start"] % 2048 == 0 for p in table["partitions"])


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_the_installed_disk_boots_alone(installed: tuple[Path, str], key: Path, firmware: str, tmp_path: Path,
                                        qemu_available: None) -> None:
    target, _ = installed
    before = sha256(target)
    # A stranger's USB stick labelled CIDATA, attached at power-on: an installed node does not read it.
    (tmp_path / "user-data").write_text("hostname: pwned-by-usb\nusers:\n- name: evil\n  password: x\n")
    stick = seed.make_seed(tmp_path / "stick.iso", tmp_path / "user-data")
    with Guest(None, firmware=firmware, boot_disk=target, extra_cdroms=[stick]) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert m.group(4) == "0", guest.tail()
        assert re.search(r"nocloud seed on /dev/\w+ not read: an installed node reads a seed only when its "
                         r"config's data_sources names nocloud", guest.console()), guest.console()[-3000:]
        guest.wait_for("state partition /dev/vda5 grown to", 120)  # after ready, in a child of PID 1
        guest.wait_ssh(key)  # the key came from the seed, through the installed config

        def sh(cmd: str) -> str:
            return guest.ssh(cmd, key)

        assert sh("hostname") == "installed-node"
        assert sh("grep -c '^evil:' /etc/passwd || true") == "0"  # the stick's user does not exist
        live_key = re.search(r"basalt: ssh host key: (ED25519 SHA256:\S+)", installed[1])
        assert live_key and f"basalt: ssh host key: {live_key.group(1)}" in guest.console()  # the same identity
        scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(guest.ssh_port), "127.0.0.1"],
                              capture_output=True, text=True, timeout=60).stdout
        shown = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=scan, capture_output=True, text=True).stdout
        assert live_key.group(1).split()[1] in shown, shown
        assert sh("cat /run/basalt/slot /run/basalt/mode") == "a\ninstalled"
        installed_config = sh("cat /var/lib/basalt/config.yaml")
        assert installed_config.splitlines()[0] == ("# Written by basalt install from: /run/basalt/datasource/nocloud/"
                                                    "meta-data, /run/basalt/datasource/nocloud/user-data")
        assert "hostname: installed-node" in installed_config
        assert "install:" not in installed_config and "k3os" not in installed_config  # done: not carried over
        assert sh("stat -c %a /var/lib/basalt/config.yaml") == "600"
        status = json.loads(sh("basalt status --json"))
        assert status["slots"]["a"]["image"] == "x86_64-iso" and status["slots"]["b"] == {"state": "empty"}
        refused = guest.ssh("basalt install --yes /dev/vda", key, check=False)
        assert refused.strip().splitlines() == [
            "install.device: /dev/vda: this system booted from it (/dev/vda2, /dev/vda3); nothing was written",
            "hint: install to another disk; a node installed there upgrades itself instead"]
        if firmware == "bios":
            sh("echo kept-$((6*7)) > /var/lib/basalt/probe; sync")
            sh("(sleep 1; basalt reboot) >/dev/null 2>&1 &")
            guest.wait_for(r"basalt: reboot now", 120)
            guest.wait_for(READY, BOOT_TIMEOUT, start=guest.console().rindex("basalt: reboot now"))
            guest.wait_ssh(key)
            assert sh("cat /var/lib/basalt/probe") == "kept-42"
    assert sha256(target) == before  # booted through an overlay


def test_install_refusals_write_nothing(built_iso: Path, key: Path, tmp_path: Path, qemu_available: None) -> None:
    """Boot disk (the ISO's drive), too small, mounted (by hand, and the live system's state
    partition), a partition, no such disk, and an interactive 'no': each refused, nothing written."""
    user_data = tmp_path / "user-data"
    user_data.write_text(f"ssh_authorized_keys:\n- {key.with_suffix('.pub').read_text().strip()}\n")
    seed_iso = seed.make_seed(tmp_path / "seed.iso", user_data)
    small = blank(tmp_path / "small.img", 256)
    data = blank(tmp_path / "data.img", 600)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "DATA", str(data)], check=True)
    big = blank(tmp_path / "big.img", DISK_GIB << 10)
    state = seed.make_state_disk(tmp_path / "state.img")
    disks = [small, data, big]
    before = {d: sha256(d) for d in disks}
    iso = next(built_iso.glob("*.iso"))
    with Guest(iso, extra_cdroms=[seed_iso], disks=[*disks, state], firmware="direct") as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_ssh(key)

        def refused(cmd: str) -> list[str]:
            out = guest.ssh(cmd, key, check=False)
            assert "nothing was written" in out, out
            return out.strip().splitlines()

        guest.ssh("mkdir -p /tmp/data && mount -o ro,noload /dev/vdb /tmp/data", key)
        listing = guest.ssh("basalt install --list", key)
        assert re.search(r"^/dev/sr0 .* \[booted from\]$", listing, re.M), listing
        assert re.search(r"^/dev/vdc +4\.0 GiB .* empty \(no partitions\)$", listing, re.M), listing
        assert re.search(r"^/dev/vdd .*ext4 BASALT_STATE", listing, re.M), listing
        assert refused("basalt install --yes /dev/sr0")[0] == \
            "install.device: /dev/sr0: this system booted from it (/dev/sr0); nothing was written"
        assert refused("basalt install --yes /dev/vda") == [
            "install.device: /dev/vda: is too small: 256 MiB, the layout needs 2243 MiB; nothing was written",
            "hint: use a larger disk, or an image definition with smaller slot_mib/boot_mib"]
        assert refused("basalt install --yes /dev/vdb")[0] == \
            "install.device: /dev/vdb: is in use: /dev/vdb is mounted at /tmp/data; nothing was written"
        state_refusal = refused("basalt install --yes /dev/vdd")
        assert state_refusal[0] == (
            "install.device: /dev/vdd: is in use: /dev/vdd is mounted at /run/basalt/state, /var, /home, /root, "
            "/opt; nothing was written")
        assert "basalt.state=none" in state_refusal[1]
        assert refused("basalt install --yes /dev/vdz")[0] == \
            "install.device: /dev/vdz: no such disk; nothing was written"
        asked = guest.ssh("echo no | basalt install /dev/vdc", key, check=False)
        assert "Everything on /dev/vdc (4.0 GiB" in asked and "will be erased." in asked
        assert "not confirmed; nothing was written" in asked
        guest.ssh("umount /tmp/data; sync", key)
        assert guest.powerdown(120), guest.tail()
    assert {d: sha256(d) for d in disks} == before


def test_reinstall_keeps_the_state_partition(installed: tuple[Path, str], built_iso: Path, key: Path, tmp_path: Path,
                                             http_server, qemu_available: None) -> None:  # type: ignore[no-untyped-def]
    """no_format over an installed disk, from an ISO fetched over HTTP (iso_url) with a config
    fetched too (config_url): the state partition's files are kept, the new config is in force.
    The live system is booted with basalt.state=none, so it leaves the disk's state partition alone."""
    target = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(installed[0]), str(target)], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    (http_server.root / "site.yaml").write_text(f"hostname: reinstalled\nssh_authorized_keys:\n- {pub}\n")
    iso = next(built_iso.glob("*.iso"))
    (http_server.root / "basalt.iso").symlink_to(iso)
    user_data = tmp_path / "user-data"
    user_data.write_text(f"ssh_authorized_keys:\n- {pub}\n")
    seed_iso = seed.make_seed(tmp_path / "seed.iso", user_data)
    cmdline = "console=ttyS0,115200 basalt.label=BASALT basalt.mode=live basalt.state=none"
    with Guest(iso, extra_cdroms=[seed_iso], disks=[target], guestfwd=[("10.0.2.100:80", http_server.port)],
               direct=(built_iso / "vmlinuz", built_iso / "initrd.img", cmdline)) as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_ssh(key)
        guest.ssh("mkdir /tmp/st && mount -t ext4 /dev/vda5 /tmp/st && echo kept > /tmp/st/var/lib/basalt/kept "
                  "&& umount /tmp/st", key)
        out = guest.ssh("basalt install --yes --no-format --config-url http://10.0.2.100/site.yaml "
                        "--iso-url http://10.0.2.100/basalt.iso /dev/vda", key, timeout=INSTALL_TIMEOUT)
        assert "basalt install: installed to /dev/vda in" in out, out
        assert "clearing the partition tables" not in out and "writing the partition table" not in out
        assert "remove the installation medium and reboot" in out
        guest.ssh("(sleep 1; basalt poweroff) >/dev/null 2>&1 &", key)
        assert guest.wait_exit(120) is not None, guest.tail()
    assert ("/basalt.iso", None) in http_server.requests and ("/site.yaml", None) in http_server.requests
    with Guest(None, boot_disk=target) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert m.group(4) == "0", guest.tail()
        guest.wait_ssh(key)
        assert guest.ssh("hostname", key) == "reinstalled"
        assert guest.ssh("cat /var/lib/basalt/kept", key) == "kept"
