"""The raw A/B disk image, built for real and inspected without mounting it: partition table,
boot partition (mtools), slot contents, and the flashable artifacts (.xz, .bmap, .sha256, SBOM)."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import subprocess
from pathlib import Path

import pytest

from agent import layout
from builder import plan
from builder.media import disk
from tests.conftest import Build


@pytest.fixture(scope="module")
def raw(build: Build) -> Path:
    return build("x86_64-raw")


def image_of(out: Path) -> Path:
    return next(p for p in out.glob("*.img") if p.name != "initrd.img")


def partitions(image: Path) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]  # type: ignore[no-any-return]


def mtools(image: Path, start: int, *args: str) -> bytes:
    return subprocess.run([args[0], "-i", f"{image}@@{start * 512}", *args[1:]], capture_output=True, check=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def test_partition_table(raw: Path) -> None:
    parts = partitions(image_of(raw))
    assert [(p["name"], p["type"]) for p in parts] == [
        ("BIOS_BOOT", disk.BIOS_BOOT), ("BASALT_BOOT", disk.ESP), ("BASALT_A", disk.LINUX_DATA),
        ("BASALT_B", disk.LINUX_DATA), ("BASALT_STATE", disk.LINUX_DATA)]
    assert all(p["start"] % 2048 == 0 and p["size"] % 2048 == 0 for p in parts)  # 1 MiB aligned
    definition = plan.load_image("x86_64-raw").outputs[0]
    assert [p["size"] // 2048 for p in parts] == [1, definition.boot_mib, definition.slot_mib, definition.slot_mib,
                                                  definition.state_mib]


def test_boot_partition_holds_grub_and_slot_a(raw: Path) -> None:
    image = image_of(raw)
    esp = partitions(image)[1]["start"]
    listing = mtools(image, esp, "mdir", "-/", "-b", "::/").decode()
    for path in ("::/EFI/BOOT/BOOTX64.EFI", "::/boot/grub/grub.cfg", "::/boot/grub/grubenv", "::/basalt/a/vmlinuz",
                 "::/basalt/a/initrd.img", "::/basalt/version"):
        assert path in listing.splitlines(), listing
    assert mtools(image, esp, "mtype", "::/boot/grub/grubenv").startswith(b"# GRUB Environment Block\nbasalt_slot=a\n")
    assert mtools(image, esp, "mtype", "::/basalt/a/vmlinuz") == (raw / "vmlinuz").read_bytes()
    assert mtools(image, esp, "mtype", "::/basalt/a/initrd.img") == (raw / "initrd.img").read_bytes()
    cfg = mtools(image, esp, "mtype", "::/boot/grub/grub.cfg").decode()
    assert f"basalt.label={layout.BOOT_LABEL} basalt.slot=$basalt_slot basalt.mode=installed" in cfg
    label = subprocess.run(["mlabel", "-s", "-i", f"{image}@@{esp * 512}", "::"], capture_output=True, text=True,
                           env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout
    assert layout.BOOT_LABEL in label


def test_slot_a_is_the_squashfs_and_slot_b_is_empty(raw: Path) -> None:
    image, squashfs = image_of(raw), (raw / "rootfs.squashfs").read_bytes()
    parts = partitions(image)
    with image.open("rb") as f:
        f.seek(parts[2]["start"] * 512)
        assert f.read(len(squashfs)) == squashfs
        f.seek(parts[3]["start"] * 512)
        assert f.read(4 << 20) == bytes(4 << 20)


def test_flashable_artifacts(raw: Path, tmp_path: Path) -> None:
    image = image_of(raw)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with lzma.open(image.with_name(image.name + ".xz")) as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest
    copy = tmp_path / "flashed.img"  # bmaptool writes the mapped blocks and checks each range's sha256
    subprocess.run(["bmaptool", "-q", "copy", "--bmap", str(image.with_name(image.name + ".bmap")), str(image),
                    str(copy)], check=True)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    check = subprocess.run(["sha256sum", "-c", *(p.name for p in sorted(raw.glob("*.sha256")))], cwd=raw,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = json.loads((raw / "manifest.json").read_text())
    files = {o["file"] for o in manifest["outputs"]}
    assert {image.name, image.name + ".xz", image.name + ".bmap", "sbom.spdx.json"} <= files
    assert {p.name for p in raw.glob("*.sha256")} == {f + ".sha256" for f in files}
    assert image.stat().st_blocks * 512 < image.stat().st_size / 3  # sparse


def test_sbom_lists_every_locked_package(raw: Path) -> None:
    sbom = json.loads((raw / "sbom.spdx.json").read_text())
    lock = json.loads((raw / "packages.lock.json").read_text())["packages"]
    assert sbom["spdxVersion"] == "SPDX-2.3"
    listed = {(p["name"], p.get("versionInfo"), p["checksums"][0]["checksumValue"])
              for p in sbom["packages"] if p.get("checksums")}
    assert {(p["name"], p["version"], p["sha256"]) for p in lock} <= listed
    assert "basalt-agent" in {p["name"] for p in sbom["packages"]}


def test_the_arm64_efi_image_is_the_same_layout_with_grub_arm64(build: Build) -> None:
    out = build("arm64-efi")
    image = image_of(out)
    parts = partitions(image)
    assert [(p["name"], p["type"]) for p in parts] == [  # UEFI only: no BIOS boot partition
        ("BASALT_BOOT", disk.ESP), ("BASALT_A", disk.LINUX_DATA), ("BASALT_B", disk.LINUX_DATA),
        ("BASALT_STATE", disk.LINUX_DATA)]
    esp = parts[0]["start"]
    loader = mtools(image, esp, "mtype", "::/EFI/BOOT/BOOTAA64.EFI")
    assert loader[:2] == b"MZ" and b"\x64\xaa" in loader[0x80:0x200]  # a PE image for machine 0xAA64
    packed = mtools(image, esp, "mtype", "::/basalt/a/vmlinuz")  # gzipped: GRUB inflates it (gzio)
    kernel = gzip.decompress(packed)
    assert kernel == (out / "vmlinuz").read_bytes() and kernel[0x38:0x3C] == b"ARM\x64"  # arm64 Image magic
    assert len(packed) < len(kernel) / 2
    assert "serial --unit=0" not in mtools(image, esp, "mtype", "::/boot/grub/grub.cfg").decode()
    lock = json.loads((out / "packages.lock.json").read_text())
    assert {p["arch"] for p in lock["packages"]} <= {"arm64", "all"}


def test_the_raspberry_pi_card_has_an_mbr_the_pi_firmware_u_boot_and_grub(build: Build) -> None:
    """images/rpi.yaml: what the Pi's boot ROM, its firmware and U-Boot each look for, on the card."""
    out = build("rpi")
    image = image_of(out)
    table = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout
    table_json = json.loads(table)["partitiontable"]
    assert table_json["label"] == "dos"
    parts = table_json["partitions"]
    # FAT32 (LBA) and bootable: the ROM reads no 0xEF partition; U-Boot scans the bootable one.
    assert [(p["type"], p.get("bootable", False)) for p in parts] == [
        ("c", True), ("83", False), ("83", False), ("83", False)]
    definition = plan.load_image("rpi").outputs[0]
    assert [p["size"] // 2048 for p in parts] == [definition.boot_mib, definition.slot_mib, definition.slot_mib,
                                                  definition.state_mib]
    boot = parts[0]["start"]
    names = mtools(image, boot, "mdir", "-b", "::/").decode().split()
    for name in ("::/bootcode.bin", "::/start_cd.elf", "::/fixup_cd.dat", "::/start4cd.elf", "::/fixup4cd.dat",
                 "::/u-boot.bin", "::/config.txt", "::/bcm2837-rpi-3-b.dtb", "::/bcm2837-rpi-3-b-plus.dtb",
                 "::/bcm2711-rpi-4-b.dtb", "::/bcm2711-rpi-400.dtb", "::/bcm2711-rpi-cm4-io.dtb"):
        assert name in names, names
    config = mtools(image, boot, "mtype", "::/config.txt").decode()
    lines = [line for line in config.splitlines() if line and not line.startswith("#")]
    assert lines[:2] == ["[all]", "arm_64bit=1"] and "kernel=u-boot.bin" in lines and "enable_uart=1" in lines
    sections = [line for line in lines if line.startswith("[")]
    assert sections == ["[all]", "[pi3]", "[pi4]", "[pi5]", "[all]"]
    pi3, pi4 = lines[lines.index("[pi3]"):lines.index("[pi4]")], lines[lines.index("[pi4]"):lines.index("[pi5]")]
    assert "start_file=start_cd.elf" in pi3 and "start_file=start4cd.elf" in pi4
    uboot = mtools(image, boot, "mtype", "::/u-boot.bin")
    assert b"U-Boot 2023.01" in uboot and b"efi/boot/bootaa64.efi" in uboot.lower()
    loader = mtools(image, boot, "mtype", "::/EFI/BOOT/BOOTAA64.EFI")
    assert loader[:2] == b"MZ" and b"\x64\xaa" in loader[0x80:0x200]
    cfg = mtools(image, boot, "mtype", "::/boot/grub/grub.cfg").decode()
    assert "console=ttyS1,115200" in cfg and "cgroup_enable=memory" in cfg
    assert image.stat().st_size <= 1 << 30  # the limit, without k3s here
    rootfs = subprocess.run(["unsquashfs", "-l", str(out / "rootfs.squashfs")], capture_output=True, text=True,
                            check=True).stdout
    for path in ("usr/sbin/wpa_supplicant", "usr/lib/firmware/brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt",
                 "usr/lib/firmware/brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt",
                 "usr/lib/firmware/cypress/cyfmac43455-sdio.bin", "brcmfmac.ko", "mac80211_hwsim.ko"):
        assert any(line.endswith(path) for line in rootfs.splitlines()), path
    assert "cyfmac4373-sdio.bin" not in rootfs  # other chips' firmware is pruned
