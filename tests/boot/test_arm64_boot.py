"""The arm64 UEFI disk image (images/arm64-efi.yaml), built on this amd64 host without running
arm64 code, booted under qemu-system-aarch64 -M virt -cpu cortex-a57 with AAVMF (TCG): GRUB
arm64-efi from the ESP, slot A's squashfs, the state partition grown to the virtual disk, and the
agent as PID 1 applying a site config (its SSH key and hostname) on arm64; then an A/B upgrade
and an automatic rollback, bundles served by a loopback HTTP server through guestfwd.

The guest is bounded by timeouts and killed on exit; its network is restricted to the SSH forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.upgrade import bundle, health
from builder import pipeline, plan
from builder.arch import Architecture
from builder.vm.qemu import READY, Guest
from tests.bundles import forged
from tests.conftest import Server
from tests.guestsh import CRNG_READY_AT, crng_ready_before

BOOT_TIMEOUT = 400
DISK_MIB = 2048


@pytest.fixture(scope="module")
def arm64_image(key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("arm64")
    config = tmp / "config.yaml"
    config.write_text(f"hostname: arm-node\nssh_authorized_keys:\n- {key.with_suffix('.pub').read_text().strip()}\n")
    return pipeline.build(plan.plan("arm64-efi", str(config)), out=tmp / "out")


@pytest.fixture(scope="module")
def arm64_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arm64-efi version 2 (a second build), and a version 3 made from it whose initramfs is not
    one: its kernel panics (no root), and the trial's ``panic=10`` reboots it. Both signed by the
    build's key."""
    import yaml
    tmp = tmp_path_factory.mktemp("arm64-upgrade")
    definition = tmp / "v2.yaml"
    definition.write_text(yaml.safe_dump({"extends": "arm64-efi", "version": "2"}))
    v2 = pipeline.build(plan.plan(str(definition)), until="bundle") / "upgrade.bundle"
    return {"v2": v2, "v3-panic": forged(v2, tmp, "v3-panic", version="3",
                                         parts={bundle.INITRD: b"not an initramfs\n" * 4096})}


def test_arm64_efi_image_boots_under_virt_with_aavmf_and_upgrades(
        arm64_image: Path, arm64_bundles: dict[str, Path], key: Path, http_server: Server) -> None:
    """The boot, then an upgrade to v2 committed by its health gate, and a v3 whose kernel panics
    on its trial boot: the node is back on v2 by itself, v3 recorded as failed."""
    for name, path in arm64_bundles.items():
        (http_server.root / f"{name}.bundle").symlink_to(path)
    image = next(arm64_image.glob("*.img"))
    with Guest(None, arch=Architecture.ARM64, firmware="uefi", boot_disk=image, boot_disk_mib=DISK_MIB,
               memory_mb=1024, guestfwd=[("10.0.2.100:80", http_server.port)]) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert m.group(4) == "0", guest.tail()
        guest.wait_for("state partition /dev/vda4 grown to", 120)  # no BIOS boot partition on arm64
        console = guest.console()
        assert "Booting `Basalt (slot a)'" in console
        assert "error:" not in console[:console.index("Loading Basalt")]  # GRUB said nothing wrong
        guest.wait_ssh(key, timeout=240)

        def sh(cmd: str) -> str:
            return guest.ssh(cmd, key, timeout=120)

        assert sh("uname -m") == "aarch64"
        assert sh("hostname") == "arm-node"
        assert sh("cat /run/basalt/slot /run/basalt/mode") == "a\ninstalled"
        status = json.loads(sh("basalt status --json"))
        assert status["slots"]["a"]["image"] == "arm64-efi" and status["slots"]["b"] == {"state": "empty"}
        # The random pool was ready before the agent's interpreter started (the firmware's seed from
        # the virtio RNG, then the driver in the initramfs), or Python's start would wait for it.
        crng = sh(CRNG_READY_AT)
        assert crng_ready_before(crng, status["phases"]["python_start_ms"]), (crng, status["phases"])
        # doctor on arm64: the kernel has what k3s needs; this image (no k3s) has not loaded it.
        doctor = json.loads(guest.ssh("basalt doctor --json", key, timeout=120, check=False))
        checks = {c["what"]: c for c in doctor["checks"]}
        assert doctor["kernel"].endswith("-arm64") and checks["kernel config"]["status"] == "ok", checks
        cgroups = checks["cgroup v2 controllers"]
        assert cgroups["status"] == "ok" and "memory" in cgroups["detail"], cgroups
        assert checks["module veth"]["status"] == "fail" and "modprobe veth" in checks["module veth"]["fix"]
        size_kb = int(sh("df -k /var | tail -1").split()[1])
        assert size_kb > (DISK_MIB - 600) * 1024 * 0.9, size_kb

        def boot_state() -> tuple[object, ...]:
            s = json.loads(sh("basalt status --json"))
            return s["slot"], s["version"], s["boot"]["committed"], s["boot"]["trial"]

        def upgrade_and_reboot(name: str) -> int:
            said = guest.ssh(f"basalt upgrade --no-reboot http://10.0.2.100/{name}.bundle 2>&1; echo rc=$?", key,
                             timeout=300)
            assert said.endswith("rc=0"), said
            mark = len(guest.console())
            sh("(sleep 1; basalt reboot) >/dev/null 2>&1 &")
            guest.wait_for(r"basalt: reboot now", 120, mark)
            return mark

        sh("echo kept-$((6*7)) > /var/lib/basalt/probe; sync")
        mark = upgrade_and_reboot("v2")
        guest.wait_for(r"basalt: health: slot b \(2\) passed its health gate: committed", BOOT_TIMEOUT + 120, mark)
        guest.wait_ssh(key, timeout=240)
        assert boot_state() == ("b", "2", "b", None)
        mark = upgrade_and_reboot("v3-panic")
        guest.wait_for(r"Kernel panic - not syncing", BOOT_TIMEOUT, mark)
        at = guest.console().rindex("Kernel panic - not syncing")
        guest.wait_for(r"basalt: health: slot a \(3\) failed its trial", BOOT_TIMEOUT + 120, at)
        guest.wait_ssh(key, timeout=240)
        assert boot_state() == ("b", "2", "b", None)
        assert guest.console()[mark:].count("Loading Basalt from slot") == 2  # the trial, then v2
        failed = json.loads(sh("basalt status --json"))["upgrade"]["failed"]["3"]["reason"]
        assert failed == health.NEVER_COMMITTED
        assert sh("cat /var/lib/basalt/probe") == "kept-42"
        assert guest.powerdown(120), guest.tail()
