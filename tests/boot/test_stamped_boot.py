"""Artifacts stamped after the build (builder/fleet/stamp.py), booted in QEMU (TCG, restricted network,
guests killed on exit): an ISO stamped with one site's config comes up as that site; one raw disk
carrying three devices' configs comes up as each device by the MAC address QEMU gives its NIC, and
with an unknown MAC as the default. The join token is in force but never printed: not on the
console, not in ``basalt config show``; the chosen config is root's only. (k3s itself is not in these
images: tests/boot/test_k3s.py runs a config's join settings under k3s's stand-in.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.fleet import stamp
from builder.vm.qemu import READY, Guest
from tests.conftest import Build

BOOT_TIMEOUT = 300
SECRET = "K10-fleet-token-52c1e8"
DEVICES = {"52:54:00:00:0a:01": "edge-a", "52:54:00:00:0b:01": "edge-b", "52:54:00:00:0c:01": "edge-c"}
SERIAL = "BSLT-SN-0042"  # a fourth device, known by its board's serial number (QEMU's SMBIOS type 1)
UNKNOWN_MAC = "52:54:00:00:ff:ff"


def config(name: str, key: Path) -> str:
    return (f"hostname: {name}\nssh_authorized_keys:\n- {key.with_suffix('.pub').read_text().strip()}\n"
            f"k3os:\n  server_url: https://10.0.2.100:6443\n  token: {SECRET}\n  labels:\n    site: {name}\n")


@pytest.fixture(scope="module")
def one_image(build: Build, key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = build("x86_64-raw")
    image = next(p for p in raw.glob("*.img") if p.name != "initrd.img")
    payload = stamp.index([{"name": name, "macs": [mac], "serials": [], "config": config(name, key)}
                           for mac, name in DEVICES.items()]
                          + [{"name": "edge-sn", "macs": [], "serials": [SERIAL], "config": config("edge-sn", key)}],
                          {"name": "fallback", "config": config("fallback", key)})
    out = stamp.stamp(image, payload, tmp_path_factory.mktemp("fleet") / "all", "fleet")
    assert SECRET not in (out.parent / "manifest.json").read_text()
    return out


def check_node(guest: Guest, key: Path, name: str) -> dict[str, object]:
    m = guest.wait_for(READY, BOOT_TIMEOUT)
    # These images have no k3s: the join settings are merged and shown, and their one error says so.
    assert m.group(4) == "1", guest.tail()
    errors = [x for x in guest.console().splitlines() if x.startswith("basalt: error")]
    assert errors == ["basalt: error: boot/k3s: error k3s: this image has no k3s (build one with k3s.enabled "
                      "in its image definition)"], guest.tail()
    guest.wait_ssh(key)
    assert guest.ssh("hostname", key) == name
    shown = guest.ssh("basalt config show", key)
    assert "k3os.token = '<redacted>'    # /run/basalt/site/config.yaml" in shown.splitlines(), shown
    assert "k3os.server_url = 'https://10.0.2.100:6443'    # /run/basalt/site/config.yaml" in shown.splitlines()
    assert f"k3os.labels.site = '{name}'" in shown
    assert guest.ssh("stat -c '%a %U' /run/basalt/site/config.yaml", key) == "600 root"
    # ... with its precompiled form beside it (the stamp's): no YAML parser on the boot path
    assert guest.ssh("stat -c '%a %U' /run/basalt/site/config.bin", key) == "600 root"
    assert guest.ssh("grep -c K10-fleet /run/basalt/site/config.yaml", key) == "1"  # in force, on the node only
    assert SECRET not in shown and SECRET not in guest.console()
    assert SECRET not in guest.ssh("cat /run/basalt/log/*.log /run/basalt/agent.log 2>/dev/null; true", key)
    status: dict[str, object] = json.loads(guest.ssh("basalt status --json", key))
    return status


@pytest.mark.parametrize("mac", [*DEVICES, UNKNOWN_MAC])
def test_one_image_boots_as_the_device_its_mac_names(one_image: Path, key: Path, mac: str,
                                                     qemu_available: None) -> None:
    name = DEVICES.get(mac, "fallback")
    with Guest(None, firmware="direct", boot_disk=one_image, boot_disk_mib=2048, mac=mac) as guest:
        status = check_node(guest, key, name)
        site = status["site"]
        assert isinstance(site, dict) and site["site"] == name
        line = next(x for x in guest.ssh("basalt status", key).splitlines() if x.startswith("site: "))
        if mac in DEVICES:
            assert site["by"] == "mac" and site["value"] == mac
            assert line.startswith(f"site: {name} (MAC {mac} on ") and line.endswith(")")
        else:
            assert site["by"] == "default"
            assert line == f"site: fallback (the default: no device matched MACs {mac})"


def test_one_image_boots_as_the_device_its_serial_number_names(one_image: Path, key: Path,
                                                               qemu_available: None) -> None:
    with Guest(None, firmware="direct", boot_disk=one_image, boot_disk_mib=2048, mac=UNKNOWN_MAC,
               serial=SERIAL) as guest:
        status = check_node(guest, key, "edge-sn")
        site = status["site"]
        assert isinstance(site, dict) and site["by"] == "serial" and site["value"] == SERIAL.lower(), site
        assert guest.ssh("cat /sys/class/dmi/id/product_serial", key) == SERIAL


def test_a_stamped_iso_boots_as_its_site(built_iso: Path, key: Path, tmp_path: Path, qemu_available: None) -> None:
    iso = next(built_iso.glob("*.iso"))
    site_file = tmp_path / "site-iso.yaml"
    site_file.write_text(config("site-iso", key))
    out = stamp.configure(iso, site_file, tmp_path / "out", "site-iso")
    with Guest(out, firmware="direct") as guest:
        status = check_node(guest, key, "site-iso")
        # one config for whoever boots it: chosen before the NIC's driver is loaded, so no MAC was read
        assert status["site"] == {"site": "site-iso", "by": "stamped", "macs": [], "serials": []}
        assert "site: site-iso (stamped)" in guest.ssh("basalt status", key).splitlines()
