"""A/B upgrades on the x86_64 raw disk, in QEMU (TCG), end to end: bundles served by a loopback
HTTP server reached through guestfwd (never any other address), written by ``basalt upgrade``,
booted on trial through GRUB's environment block, committed by the health gate or come back
from by themselves.

Builds: v1 (the disk), v2, and two broken v3s — one whose health check fails (it has no SSH
server, and the site's check looks for it), one whose kernel cannot find its root (an initramfs
without squashfs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agent.upgrade import bundle, health
from builder import pipeline, plan, signing
from builder.bench import powercut
from builder.vm.qemu import READY, Guest
from tests.bundles import forged
from tests.conftest import ROOT, Server

BOOT_TIMEOUT = 300
V1 = plan.load_image("x86_64-raw").version
DISK_MIB = 2048
HEALTH_TIMEOUT_S = 15  # the failing v3 is judged once this is over: no longer than a check needs
SERVER = "http://10.0.2.100"


def definition(tmp: Path, name: str, version: str, **extra: object) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"extends": "x86_64-raw", "version": version, **extra}))
    return str(path)


@pytest.fixture(scope="module")
def builds(key: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("upgrade")
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({
        "hostname": "upgrade-node", "ssh_authorized_keys": [key.with_suffix(".pub").read_text().strip()],
        "basalt": {"upgrade": {"health_timeout": HEALTH_TIMEOUT_S, "health_checks": [
            {"name": "ssh-server", "run": "test -x /usr/sbin/dropbear", "timeout": 10}]}}}))
    base = yaml.safe_load((ROOT / "images/x86_64-iso.yaml").read_text())
    # v1 is the image as it is (its root shared with the other x86_64-raw tests); the two v3s share
    # theirs (no SSH server), the second's initramfs without the squashfs driver.
    out = {"disk": next(pipeline.build(plan.plan("x86_64-raw", str(config)), out=tmp / "out")
                        .glob("x86_64-raw-*.img"))}
    no_ssh = [p for p in base["packages"] if p != "dropbear-bin"]
    defs = {"v2": definition(tmp, "v2", "2"),
            "v3-check": definition(tmp, "v3-check", "3", packages=no_ssh),
            "v3-noroot": definition(tmp, "v3-noroot", "3", packages=no_ssh, kernel={"initramfs": {"modules": [
                m for m in base["kernel"]["initramfs"]["modules"] if m != "squashfs"]}})}
    for name, path in defs.items():
        out[name] = pipeline.build(plan.plan(path), until="bundle") / "upgrade.bundle"
    return out


def test_upgrade_commit_rollback_and_broken_versions_that_come_back(
        builds: dict[str, Path], key: Path, http_server: Server, tmp_path: Path, qemu_available: None) -> None:
    www = http_server.root
    for name in ("v2", "v3-check", "v3-noroot"):
        (www / f"{name}.bundle").symlink_to(builds[name])
    data = builds["v2"].read_bytes()
    (www / "bad-signature.bundle").write_bytes(data.replace(b'"version": "2"', b'"version": "4"', 1))
    forged(builds["v2"], www, "wrong-arch", arch="arm64")
    forged(builds["v2"], www, "bad-hash", flip=bundle.ROOT)
    forged(builds["v2"], www, "other-key", key=signing.generate(tmp_path / "other.key", "another key"))
    with Guest(None, boot_disk=builds["disk"], boot_disk_mib=DISK_MIB,
               guestfwd=[("10.0.2.100:80", http_server.port)]) as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_ssh(key)

        def sh(cmd: str, check: bool = True) -> str:
            return guest.ssh(cmd, key, timeout=300, check=check)

        def status() -> dict[str, object]:
            return json.loads(sh("basalt status --json"))

        def rebooted(mark: int, timeout: float = BOOT_TIMEOUT) -> int:
            """Wait for a clean reboot after console offset ``mark`` and the ready line after it;
            returns the reboot's offset."""
            guest.wait_for(r"basalt: reboot now", timeout, start=mark)
            at = guest.console().rindex("basalt: reboot now")
            guest.wait_for(READY, BOOT_TIMEOUT, start=at)
            guest.wait_ssh(key)
            return at

        def reboot(command: str = "basalt reboot") -> int:
            """Start ``command`` (it reboots the node) in the background; the console offset before it."""
            mark = len(guest.console())
            sh(f"(sleep 1; {command}) >/dev/null 2>&1 &")
            return mark

        s = status()
        assert (s["slot"], s["version"], s["boot"]) == ("a", V1, {"committed": "a", "trial": None, "tries": 0})
        sh("echo kept-$((6*7)) > /var/lib/basalt/probe; sync")

        # Bundles that are wrong: refused, slot b and the boot selection untouched (byte for byte).
        before = sh("sha256sum /dev/vda4 /run/basalt/medium/boot/grub/grubenv; ls -lR /run/basalt/medium/basalt")
        for name, why in (("bad-signature", "refused: bad signature"), ("other-key", "refused: it is signed with "
                          "another key"), ("bad-hash", f"refused: bad hash: {bundle.ROOT} has sha256"),
                          ("wrong-arch", "refused: it is for arm64, this node is x86_64")):
            said = sh(f"basalt upgrade --no-reboot {SERVER}/{name}.bundle 2>&1; echo rc=$?", check=False)
            assert why in said and said.endswith("rc=1"), (name, said)
        assert sh("sha256sum /dev/vda4 /run/basalt/medium/boot/grub/grubenv; ls -lR /run/basalt/medium/basalt") \
            == before

        # v1 -> v2: written to slot b, booted on trial, committed by the health gate.
        said = sh(f"basalt upgrade --no-reboot {SERVER}/v2.bundle 2>&1; echo rc=$?")
        assert said.endswith("rc=0") and "its trial boot is armed" in said, said
        assert status()["boot"] == {"committed": "a", "trial": "b", "tries": 1}
        at = rebooted(reboot())
        guest.wait_for(r"basalt: health: slot b \(2\) passed its health gate: committed", 120, start=at)
        s = status()
        assert (s["slot"], s["version"], s["boot"]) == ("b", "2", {"committed": "b", "trial": None, "tries": 0})
        assert s["slots"]["b"]["version"] == "2" and s["slots"]["a"]["version"] == V1  # type: ignore[index]
        assert s["upgrade"]["last"]["result"] == "committed"  # type: ignore[index]
        assert sh("cat /var/lib/basalt/probe; hostname") == "kept-42\nupgrade-node"  # state and config survive
        trial = guest.console()[at:]
        assert "basalt: trial boot of slot b (boots left after this one: 0; then slot a)" in trial  # GRUB
        # The watchdog, armed for a trial: the loop must turn within the health timeout + 60 s.
        assert f"trial boot: the main loop must turn within {HEALTH_TIMEOUT_S + 60}s" in trial
        assert re.search(r"ready version=2 .* errors=0", trial), trial[-3000:]  # basalt.trial=1 is not config

        # basalt rollback: back to v1 by hand, then forward to v2 again.
        rebooted(reboot("basalt rollback"))
        s = status()
        assert (s["slot"], s["version"]) == ("a", V1)
        assert sh("cat /var/lib/basalt/probe") == "kept-42"
        rebooted(reboot("basalt rollback"))
        s = status()
        assert (s["slot"], s["version"]) == ("b", "2")

        # v3 whose health check fails: the gate fails it, the node reboots into v2 by itself.
        said = sh(f"basalt upgrade --no-reboot {SERVER}/v3-check.bundle 2>&1; echo rc=$?")
        assert said.endswith("rc=0"), said
        mark = reboot()
        guest.wait_for(r"basalt: health: slot a \(3\) failed: health gate failed after", BOOT_TIMEOUT + 120,
                       start=mark)
        rebooted(guest.console().rindex("failed: health gate failed after"))
        s = status()
        assert (s["slot"], s["version"], s["boot"]["committed"]) == ("b", "2", "b")  # type: ignore[index]
        reason = s["upgrade"]["failed"]["3"]["reason"]  # type: ignore[index]
        assert "health check ssh-server exited 1" in reason, reason
        assert "failed version 3: health gate failed after" in sh("basalt status")
        boots = guest.console()[mark:].count("Loading Basalt from slot")
        assert boots == 2, boots  # the trial, then v2: back within 3 boots

        # v3 again: refused without --force; with it, a v3 whose kernel cannot find its root comes back too.
        said = sh(f"basalt upgrade --no-reboot {SERVER}/v3-noroot.bundle 2>&1; echo rc=$?", check=False)
        assert "refused: version 3 failed on this node before" in said and said.endswith("rc=1"), said
        said = sh(f"basalt upgrade --force --no-reboot {SERVER}/v3-noroot.bundle 2>&1; echo rc=$?")
        assert said.endswith("rc=0"), said
        mark = reboot()
        guest.wait_for(r"rescue: this is a trial boot: rebooting", BOOT_TIMEOUT, start=mark)
        at = guest.console().rindex("rescue: this is a trial boot")
        guest.wait_for(r"basalt: health: slot a \(3\) failed its trial", BOOT_TIMEOUT, start=at)
        guest.wait_ssh(key)
        s = status()
        assert (s["slot"], s["version"], s["boot"]) == ("b", "2", {"committed": "b", "trial": None, "tries": 0})
        assert s["upgrade"]["failed"]["3"]["reason"] == health.NEVER_COMMITTED  # type: ignore[index]
        assert guest.console()[mark:].count("Loading Basalt from slot") == 2
        assert sh("cat /var/lib/basalt/probe") == "kept-42"


def test_bundle_is_the_slot_payload(builds: dict[str, Path]) -> None:
    """The bundle's parts are exactly its build's kernel, initramfs and squashfs, in a signed manifest."""
    import tarfile
    with tarfile.open(builds["v2"]) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(bundle.MANIFEST).read())  # type: ignore[union-attr]
    assert names == [bundle.MANIFEST, bundle.SIGNATURE, bundle.KERNEL, bundle.INITRD, bundle.ROOT]
    assert (manifest["image"], manifest["version"], manifest["arch"]) == ("x86_64-raw", "2", "x86_64")


def test_the_oci_upgrade_image_carries_the_same_bundle(builds: dict[str, Path]) -> None:
    """The OCI image (for the system-upgrade-controller), read as an OCI layout: its one layer holds
    the bundle byte for byte and the job's script; its config runs the script."""
    import hashlib
    import tarfile
    archive = builds["v2"].with_name("upgrade.oci.tar")
    with tarfile.open(archive) as outer:
        index = json.loads(outer.extractfile("index.json").read())  # type: ignore[union-attr]
        entry = index["manifests"][0]
        assert entry["annotations"]["io.containerd.image.name"] == "basalt/x86_64-raw:2"
        assert entry["platform"] == {"architecture": "amd64", "os": "linux"}

        def blob(digest: str) -> bytes:
            data = outer.extractfile(f"blobs/sha256/{digest.split(':')[1]}").read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == digest.split(":")[1]
            return data

        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
    assert config["config"]["Cmd"] == ["/bin/upgrade-host"]
    import io
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        payload = inner.extractfile("payload/upgrade.bundle").read()  # type: ignore[union-attr]
        script = inner.extractfile("bin/upgrade-host").read().decode()  # type: ignore[union-attr]
    assert payload == builds["v2"].read_bytes()
    assert "chroot /host /usr/sbin/basalt upgrade" in script


POWER_CUTS = 10  # half while basalt upgrade runs, half during the first boot of the new slot


def test_power_loss_during_upgrade_and_the_trial_boot_never_strands_the_node(
        builds: dict[str, Path], key: Path, tmp_path: Path, qemu_available: None) -> None:
    """Ten cuts (builder/bench/powercut.py), each from a snapshot of the node (v1 ready with the bundle on
    its state partition, or v2 just written with its trial armed), at a random moment of the upgrade
    or of the trial boot; after each the state partition is clean and the node boots from power-on
    to a whole, settled slot with its state. ``python -m builder.bench.trials --power-cuts 100`` soaks."""
    import os
    import time
    seed = int(os.environ.get("BASALT_POWER_SEED") or time.time())
    disk = tmp_path / "disk.qcow2"  # over v1's image, which stays as it is
    windows = powercut.prepare(builds["disk"], builds["v2"], key, disk, DISK_MIB, BOOT_TIMEOUT)
    done: list[str] = []
    for record in powercut.cuts(disk, key, tmp_path, POWER_CUTS, seed, windows, HEALTH_TIMEOUT_S + 120,
                                BOOT_TIMEOUT):
        done.append(record["when"])
        assert powercut.stranded(record, (V1, "2")) == "", (seed, done, record)
    assert len(done) == POWER_CUTS
