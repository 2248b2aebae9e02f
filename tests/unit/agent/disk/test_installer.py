"""basalt install's checks on a stand-in /sys/block (every refusal, with its exact message), what
it says is on a disk (real filesystems made here), when a live boot installs by itself (config
and kernel command line forms), and the config it installs (a real local HTTP server for
config_url). Writing a disk needs a kernel's block devices: tests/boot/test_install.py does it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config import datasources, sources
from agent.config.section import install_wanted_at_boot
from agent.disk import install, installplan, targets
from agent.disk.partitions import Partition
from agent.errors import BasaltError
from builder.media import disk

PLAN = installplan.Plan(
    image="basalt-x86", version="1.0.0", arch="amd64", table="gpt", images={}, files=(),
    partitions=tuple(Partition(n, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", s, c) for n, s, c in (
        ("BIOS_BOOT", 1, "bios"), ("BASALT_BOOT", 128, "boot"), ("BASALT_A", 1024, "slot"), ("BASALT_B", 1024, None),
        ("BASALT_STATE", 64, "state"))))
GIB = 1 << 30
GATHER = sources.gather  # the real one, also while a test replaces it


def fake_block(root: Path, name: str, size: int, parts: tuple[str, ...] = (), removable: bool = False,
               ro: bool = False, model: str = "", cdrom: bool = False) -> None:
    base = root / name
    (base / "device").mkdir(parents=True)
    (base / "size").write_text(f"{size // 512}\n")
    (base / "removable").write_text("1\n" if removable else "0\n")
    (base / "ro").write_text("1\n" if ro else "0\n")
    (base / "device/type").write_text("5\n" if cdrom else "0\n")
    if model:
        (base / "device/model").write_text(model + "\n")
    for n, pname in enumerate(parts, 1):
        p = base / f"{name}{n}"
        p.mkdir()
        (p / "partition").write_text(f"{n}\n")
        (p / "size").write_text(f"{size // 512 // (len(parts) + 1)}\n")
        (p / "uevent").write_text(f"DEVNAME={name}{n}\nPARTNAME={pname}\n")


@pytest.fixture
def host(tmp_path: Path) -> targets.Host:
    root = tmp_path / "block"
    fake_block(root, "sr0", 70 << 20, model="QEMU DVD-ROM", removable=True, cdrom=True)
    fake_block(root, "vda", 4 * GIB, model="Samsung SSD")
    fake_block(root, "vdb", 256 << 20)
    fake_block(root, "vdc", 8 * GIB, parts=("data",))
    fake_block(root, "vdd", 16 * GIB, removable=True, model="USB Stick")
    fake_block(root, "vde", 4 * GIB, ro=True)
    fake_block(root, "vdf", 4 * GIB, parts=("BIOS_BOOT", "BASALT_BOOT", "BASALT_A", "BASALT_B", "BASALT_STATE"))
    fake_block(root, "loop0", 60 << 20)
    fake_block(root, "vdg", 4 * GIB)
    (root / "vdg/holders").mkdir()
    (root / "vdg/holders/dm-0").mkdir()
    what = {"/dev/vdc1": "ext4 DATA", "/dev/vdf2": "vfat BASALT_BOOT", "/dev/vdf5": "ext4 BASALT_STATE"}
    return targets.Host(sys_block=str(root), mounts=[("/dev/sr0", "/run/basalt/medium"), ("/dev/loop0", "/"),
                                                     ("/dev/vdc1", "/run/basalt/state"), ("/dev/vdc1", "/var")],
                        swaps=[], boot_devices=["/dev/sr0", "/dev/loop0"], probe=lambda d: what.get(d, ""))


HINT_IN_USE = ("hint: unmount it first; a live system uses a disk's BASALT_STATE partition for /var: boot the ISO "
               "with basalt.state=none to leave it alone")


@pytest.mark.parametrize(("device", "options", "expected"), [
    ("/dev/sr0", {}, ["install.device: /dev/sr0: this system booted from it (/dev/sr0); nothing was written",
                      "hint: install to another disk; a node installed there upgrades itself instead"]),
    ("/dev/vdb", {}, ["install.device: /dev/vdb: is too small: 256 MiB, the layout needs 2243 MiB; nothing was written",
                      "hint: use a larger disk, or an image definition with smaller slot_mib/boot_mib"]),
    ("/dev/vdc", {}, ["install.device: /dev/vdc: is in use: /dev/vdc1 is mounted at /run/basalt/state, /var; "
                      "nothing was written", HINT_IN_USE]),
    ("/dev/vdc1", {}, ["install.device: /dev/vdc1: is a partition of /dev/vdc, not a disk; nothing was written",
                       "hint: give the whole disk: basalt install /dev/vdc"]),
    ("/dev/vdz", {}, ["install.device: /dev/vdz: no such disk; nothing was written",
                      "hint: basalt install --list shows the disks"]),
    ("/dev/loop0", {}, ["install.device: /dev/loop0: is not a disk (loop, RAM, device-mapper and RAID devices are "
                        "not installed to); nothing was written",
                        "hint: basalt install --list shows the disks"]),
    ("/dev/vdd", {}, ["install.device: /dev/vdd: is a removable disk; nothing was written",
                      "hint: --force (install.force) installs to it anyway"]),
    ("/dev/vde", {}, ["install.device: /dev/vde: is read-only; nothing was written",
                      "hint: basalt install --list shows the disks"]),
    ("/dev/vdg", {}, ["install.device: /dev/vdg: is in use: /dev/vdg is held by dm-0; nothing was written",
                      HINT_IN_USE]),
    ("/dev/vda", {"no_format": True}, [
        "install.device: /dev/vda: no_format: its partitions (none) are not Basalt's (BIOS_BOOT, BASALT_BOOT, "
        "BASALT_A, BASALT_B, BASALT_STATE); nothing was written",
        "hint: install without no_format to partition the disk"]),
    ("/dev/vdf", {"no_format": True}, [
        "install.device: /dev/vdf: no_format: partition BASALT_A is 682 MiB, smaller than 1024 MiB; "
        "nothing was written", "hint: install without no_format to partition the disk"]),
])
def test_refusals(host: targets.Host, device: str, options: dict[str, bool], expected: list[str]) -> None:
    with pytest.raises(BasaltError) as exc:
        install.check_target(device, host, PLAN, **options)
    assert exc.value.render().splitlines() == expected


def test_what_may_be_installed_to(host: targets.Host) -> None:
    assert install.check_target("/dev/vda", host, PLAN).path == "/dev/vda"
    assert install.check_target("/dev/vdd", host, PLAN, force=True).name == "vdd"  # removable, forced
    with pytest.raises(BasaltError, match="booted from"):
        install.check_target("/dev/sr0", host, PLAN, force=True)  # --force never overrides the boot disk


def test_listing(host: targets.Host) -> None:
    assert targets.listing(host).splitlines() == [
        "DEVICE    SIZE      MODEL         REMOVABLE  ON IT",
        "/dev/sr0  70 MiB    QEMU DVD-ROM  yes        optical drive [booted from]",
        "/dev/vda  4.0 GiB   Samsung SSD   no         empty (no partitions)",
        "/dev/vdb  256 MiB   -             no         empty (no partitions)",
        "/dev/vdc  8.0 GiB   -             no         vdc1 (ext4 DATA)",
        "/dev/vdd  16.0 GiB  USB Stick     yes        empty (no partitions)",
        "/dev/vde  4.0 GiB   -             no         empty (no partitions)",
        "/dev/vdf  4.0 GiB   -             no         vdf1, vdf2 (vfat BASALT_BOOT), vdf3, vdf4, "
        "vdf5 (ext4 BASALT_STATE)",
        "/dev/vdg  4.0 GiB   -             no         empty (no partitions)"]


def test_what_is_on_a_disk_is_read_from_its_first_blocks(tmp_path: Path) -> None:
    ext4 = tmp_path / "ext4.img"
    disk.ext4(ext4, "BASALT_STATE", 16, None, 0, "t")
    fat = tmp_path / "fat.img"
    disk.fat(fat, "BASALT_BOOT", 32 * 1024, {}, 0)
    gpt = tmp_path / "gpt.img"
    disk.write(disk.Disk("gpt", (disk.Partition("BASALT_A", disk.LINUX_DATA, 1),), seed="x"), gpt)
    swap = tmp_path / "swap.img"
    with swap.open("wb") as f:
        f.truncate(1 << 20)
    subprocess.run(["mkswap", "-q", str(swap)], check=True, capture_output=True)
    empty = tmp_path / "empty.img"
    empty.write_bytes(bytes(64 << 10))
    assert [targets.probe(str(p)) for p in (ext4, fat, gpt, swap, empty, tmp_path / "missing")] == [
        "ext4 BASALT_STATE", "vfat BASALT_BOOT", "GPT partition table", "swap", "", ""]


def gathered(tmp_path: Path, cmdline: str) -> dict[str, object]:
    merged = _gather(tmp_path, cmdline)
    assert not merged.problems, merged.problems
    return merged.value


@pytest.mark.parametrize(("cmdline", "installs", "device"), [
    ("console=ttyS0 k3os.install.device=/dev/vda k3os.install.silent=true", True, "/dev/vda"),
    ("basalt.install.device=/dev/sda basalt.install.silent", True, "/dev/sda"),
    ("k3os.mode=install k3os.install.device=/dev/vdb", True, "/dev/vdb"),
    ("basalt.install.device=/dev/vda", False, "/dev/vda"),  # asks: not silent, not install mode
    ("basalt.install.silent=true", False, None),  # no device
    ("quiet", False, None),
])
def test_when_a_live_boot_installs_by_itself(tmp_path: Path, cmdline: str, installs: bool,
                                             device: str | None) -> None:
    config = gathered(tmp_path, cmdline)
    assert install_wanted_at_boot(config, cmdline) is installs
    assert install.settings_from(config).device == device


def test_install_section_merges_k3os_under_basalt() -> None:
    s = install.settings_from({"k3os": {"install": {"device": "/dev/sda", "power_off": True}},
                               "basalt": {"install": {"device": "/dev/vda", "reboot": True}}})
    assert (s.device, s.power_off, s.reboot, s.silent) == ("/dev/vda", True, True, False)


def test_the_installed_config_is_merged_validated_and_loses_install(http_server: object, monkeypatch:
                                                                    pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = http_server.root  # type: ignore[attr-defined]
    (root / "site.yaml").write_text("hostname: from-url\nk3os:\n  labels:\n    site: berlin\n")
    (root / "bad.yaml").write_text("hostname: ok\nk3os:\n  labels: [oops]\n")
    monkeypatch.setattr(sources, "gather", lambda cmdline: _gather(tmp_path, cmdline))  # no node's own paths
    url = f"http://127.0.0.1:{http_server.port}"  # type: ignore[attr-defined]
    once = lambda u: datasources.get(u, attempts=1, timeout=5)  # noqa: E731
    cmdline = "basalt.hostname=from-cmdline basalt.install.device=/dev/vda basalt.install.silent k3os.ntp_servers=a"
    text = install.config_to_install(install.Settings(config_url=f"{url}/site.yaml"), cmdline, once)
    assert text == (f"# Written by basalt install from: kernel command line, {url}/site.yaml\n"
                    "hostname: from-url\nk3os:\n  labels:\n    site: berlin\n  ntp_servers:\n  - a\n")
    with pytest.raises(BasaltError) as exc:
        install.config_to_install(install.Settings(config_url=f"{url}/bad.yaml"), cmdline, once)
    assert exc.value.render().splitlines()[0].startswith(f"{url}/bad.yaml:3: k3os.labels: ")
    assert exc.value.render().splitlines()[-1] == "install.config_url: the config has problems; nothing was written"
    with pytest.raises(BasaltError) as exc:
        install.config_to_install(install.Settings(config_url=f"{url}/missing.yaml"), cmdline, once)
    assert exc.value.render().startswith(f"install.config_url: {url}/missing.yaml: no answer after 1 attempts")


def _gather(tmp_path: Path, cmdline: str) -> sources.Merged:
    return GATHER(cmdline, baked=str(tmp_path / "none"), state=str(tmp_path / "none"),
                          state_dir=str(tmp_path / "none.d"), datasource_dirs=(),
                          known_good=str(tmp_path / "kg.json"), rejected=str(tmp_path / "rej.json"))


def test_host_key_fingerprint_is_what_ssh_keygen_shows(tmp_path: Path) -> None:
    import base64
    import struct

    from agent.modules import plans

    public = bytes(range(32, 64))
    key = tmp_path / "dropbear_ed25519_host_key"
    kind = b"ssh-ed25519"
    key.write_bytes(struct.pack(">I", len(kind)) + kind + struct.pack(">I", 64) + bytes(32) + public)
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + public
    pub = tmp_path / "key.pub"
    pub.write_text(f"ssh-ed25519 {base64.b64encode(blob).decode()} test\n")
    shown = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True).stdout
    assert shown.split()[1] == plans.host_key_fingerprint(str(key))
    key.write_bytes(b"\0\0\0\x07ssh-rsa")
    with pytest.raises(ValueError, match="not a dropbear ed25519 key"):
        plans.host_key_fingerprint(str(key))
