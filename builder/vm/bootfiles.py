"""The files QEMU boots: a disk's format, images made with qemu-img, and what QEMU takes from a
built medium instead of its firmware — the kernel, initramfs and command line its GRUB would boot
(``firmware="direct"``), and a Pi card's U-Boot and device tree (QEMU's raspi3b starts where the
Pi's VideoCore firmware would). Read with pycdlib (an ISO) or mtools (a disk's FAT boot
partition), nothing mounted."""

from __future__ import annotations

import io
from pathlib import Path

from builder import host
from builder.media.disk import boot_partition


def boot_files(medium: Path, work: Path) -> tuple[Path, Path, str]:
    """What the medium's own GRUB boots by default: its kernel, its initramfs and their command
    line (an ISO's live entry; a disk's slot A, installed), copied into ``work`` for QEMU to load
    directly. Only the firmware and the boot loader are left out."""
    kernel, initrd = work / "direct-vmlinuz", work / "direct-initrd.img"
    if medium.suffix == ".iso":
        import pycdlib
        iso = pycdlib.PyCdlib()
        iso.open(str(medium))
        try:
            def read(path: str) -> bytes:
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                return out.getvalue()
            entry = grub_entry(read("/boot/grub/grub.cfg").decode(), {})
            kernel.write_bytes(read(entry[0]))
            initrd.write_bytes(read(entry[1]))
        finally:
            iso.close()
    else:
        if disk_format(medium) == "qcow2":  # read as the guest would now see it
            qemu_img("convert", "-O", "raw", str(medium), str(work / "direct-disk.img"))
            medium = work / "direct-disk.img"
        fat = f"{medium}@@{boot_partition(medium)}"
        cfg = work / "direct-grub.cfg"
        mcopy(fat, "/boot/grub/grub.cfg", cfg)
        entry = grub_entry(cfg.read_text(), {"basalt_boot": "a", "basalt_trial": ""})
        mcopy(fat, entry[0], kernel)
        mcopy(fat, entry[1], initrd)
        (work / "direct-disk.img").unlink(missing_ok=True)
    return kernel, initrd, entry[2]


def grub_entry(cfg: str, variables: dict[str, str]) -> tuple[str, str, str]:
    """(kernel, initrd, command line) of a grub.cfg's first menu entry, ``$variables`` put in."""
    lines = [line.strip() for line in cfg.splitlines()]
    linux = next(line for line in lines if line.startswith("linux "))
    initrd = next(line for line in lines if line.startswith("initrd "))
    for name, value in variables.items():
        linux, initrd = linux.replace(f"${name}", value), initrd.replace(f"${name}", value)
    _, kernel, *args = linux.split()
    return kernel, initrd.split()[1], " ".join(args)


def mcopy(fat: str, path: str, dest: Path, hint: str = "apt-get install mtools") -> None:
    """``path`` on the FAT file system at ``fat`` (FILE@@OFFSET) copied to ``dest``."""
    host.run(["mcopy", "-n", "-i", fat, f"::{path}", str(dest)],
             f"{fat.split('@@')[0]}: reading {path.lstrip('/')} from its boot partition", hint=hint,
             env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})


def rpi_boot_files(card: Path, work: Path) -> tuple[Path, Path]:
    """U-Boot and QEMU raspi3b's device tree, read from the card's boot partition: QEMU runs what
    the card carries, as the Pi's firmware would."""
    from builder.media import rpi
    offset = boot_partition(card)
    out = []
    for name in ("u-boot.bin", rpi.QEMU_DTB):
        out.append(work / name)
        mcopy(f"{card}@@{offset}", f"/{name}", out[-1], hint="build it with board: rpi")
    return out[0], out[1]


def disk_format(path: Path) -> str:
    """How QEMU reads a disk file: a .qcow2 as qcow2 (snapshots, overlays), anything else raw."""
    return "qcow2" if path.suffix == ".qcow2" else "raw"


def qemu_img(*args: str) -> None:
    host.run(["qemu-img", *args], f"qemu-img {args[0]}")
