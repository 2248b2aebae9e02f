"""The Raspberry Pi board (``outputs[].board: rpi``): what its SD card's boot partition holds
besides the A/B disk's own files (builder/media/abdisk.py).

Boot chain: the Pi's boot ROM (Pi 3) or EEPROM (Pi 4) reads the first partition of the MBR
card (FAT32, type 0x0C), loads the firmware and ``config.txt``, which names ``u-boot.bin``
(Debian's ``u-boot-rpi``, the rpi_arm64 build that runs on Pi 3 and Pi 4 with the device tree
the firmware hands over). U-Boot's distro boot finds ``/EFI/BOOT/BOOTAA64.EFI`` on the bootable
first partition and starts GRUB, which boots the slot its environment block names: the same
GRUB, menu and slot selection as on every Basalt disk. The Pi's own ``tryboot`` is not used:
Debian's kernels cannot arm it (docs/raspberry-pi.md).

Packages: ``raspi-firmware`` and ``u-boot-rpi`` (Debian's non-free-firmware and main
components), fetched as boot packages; nothing of them runs on the build host.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import BasaltError, Problem
from builder import host
from builder.media import grub

PACKAGES = ("raspi-firmware", "u-boot-rpi")
# The cut-down firmware (config.txt selects it per model) and the Pi 3's second stage.
FIRMWARE = ("bootcode.bin", "start_cd.elf", "fixup_cd.dat", "start4cd.elf", "fixup4cd.dat")
UBOOT = "usr/lib/u-boot/rpi_arm64/u-boot.bin"
FIRMWARE_DIR = "usr/lib/raspi-firmware"
# The 64-bit boards Debian's kernel has device trees for: Pi 3 family (bcm2837), Pi 4 family (bcm2711).
DTB_PATTERNS = ("broadcom/bcm2837-rpi-*.dtb", "broadcom/bcm2711-rpi-*.dtb")
QEMU_DTB = "bcm2837-rpi-3-b.dtb"  # QEMU's raspi3b
SOURCES = ("builder/media/rpi.py", "builder/templates/rpi-config.txt.j2")


def unpack(packages: list[tuple[dict[str, object], Path]], work: Path) -> Path:
    """Extract the board's boot packages (from the fetch lock) into one tree."""
    tree = work / "rpi"
    found = {str(row["name"]) for row, _ in packages}
    missing = [p for p in PACKAGES if p not in found]
    if missing:
        raise BasaltError(Problem(f"board rpi: packages {', '.join(missing)} were not fetched",
                                  hint="internal: the plan adds them as boot packages for board: rpi"))
    for row, blob in packages:
        if row["name"] in PACKAGES:
            host.run(["dpkg-deb", "-x", str(blob), str(tree)], f"unpacking {blob.name}")
    return tree


def config_txt(version: str) -> str:
    return grub.render("rpi-config.txt.j2", version=version)


def boot_files(tree: Path, dtbs: Path, version: str) -> dict[str, bytes | Path]:
    """The firmware, ``config.txt``, U-Boot and the device trees, by path on the boot partition.
    The device trees sit at its root, where the firmware looks with ``upstream_kernel=1``."""
    files: dict[str, bytes | Path] = {"/config.txt": config_txt(version).encode()}
    for name in FIRMWARE:
        path = tree / FIRMWARE_DIR / name
        if not path.is_file():
            raise BasaltError(Problem(f"board rpi: {FIRMWARE_DIR}/{name} is not in raspi-firmware",
                                      hint="the package's layout changed; see builder/media/rpi.py FIRMWARE"))
        files[f"/{name}"] = path
    uboot = tree / UBOOT
    if not uboot.is_file():
        raise BasaltError(Problem(f"board rpi: {UBOOT} is not in u-boot-rpi",
                                  hint="the package's layout changed; see builder/media/rpi.py UBOOT"))
    files["/u-boot.bin"] = uboot
    trees = sorted(p for pattern in DTB_PATTERNS for p in dtbs.glob(pattern))
    if not any(p.name == QEMU_DTB for p in trees):
        raise BasaltError(Problem(f"board rpi: the kernel has no broadcom/{QEMU_DTB}",
                                  hint="kernel.package must be Debian's arm64 kernel, or a kernel.deb "
                                       "that ships the Raspberry Pi device trees"))
    files.update({f"/{p.name}": p for p in trees})
    return files
