"""What ``firmware="direct"`` boots (builder/vm/bootfiles.py): the first menu entry of the grub.cfg the
stages really generate, with GRUB's variables put in as GRUB would on a committed boot of slot A."""

from __future__ import annotations

from agent import layout
from builder.media import abdisk
from builder.stages import iso
from builder.vm import bootfiles

OPTIONS = {"arch": "x86_64", "version": "7.1", "cmdline": "console=ttyS0,115200 quiet", "label": "BASALT_BOOT",
           "volume_id": "BASALT"}


def test_the_iso_entry_is_its_live_kernel_and_command_line() -> None:
    cfg = iso.grub_cfg(OPTIONS)
    assert bootfiles.grub_entry(cfg, {}) == (
        layout.MEDIUM_KERNEL, layout.MEDIUM_INITRD, "console=ttyS0,115200 quiet basalt.label=BASALT basalt.mode=live")


def test_the_disk_entry_is_slot_a_installed_with_no_trial() -> None:
    cfg = abdisk.grub_cfg(OPTIONS)
    assert "$basalt_boot" in cfg and "$basalt_trial" in cfg  # what GRUB fills in at boot
    assert bootfiles.grub_entry(cfg, {"basalt_boot": "a", "basalt_trial": ""}) == (
        f"{layout.slot_dir('a')}/vmlinuz", f"{layout.slot_dir('a')}/initrd.img",
        "console=ttyS0,115200 quiet basalt.label=BASALT_BOOT basalt.slot=a basalt.mode=installed")
