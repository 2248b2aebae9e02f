"""Boot selection: which slot the boot loader starts, and a one-shot trial of the other one.

One interface, ``BootSelection``, with one backend per boot loader. Every Basalt disk today boots
through GRUB (x86 BIOS and UEFI, arm64 UEFI, and the Raspberry Pi, whose U-Boot loads the same
GRUB as an EFI application), so the backend is ``GrubEnv``: GRUB's environment block
(``/boot/grub/grubenv`` on the boot partition), read and written here in Python.

The variables, and what the boot menu (builder/templates/grub-disk.cfg.j2) does with them:

- ``basalt_slot``: the committed slot (a|b), booted unless a trial is armed;
- ``basalt_try`` + ``basalt_tries``: a slot on trial and the boots it has left. GRUB counts one
  down and saves it *before* booting the trial (and boots the committed slot when it cannot save),
  so a trial that panics, hangs into the watchdog, fails in its initramfs or loses power is never
  booted again: the next boot is the committed slot's.

Writes are atomic: the block is rewritten in place (the same file, the same clusters, so GRUB's
own ``save_env`` keeps working) with everything it says inside its first 512-byte sector, so
one sector write changes it; it is fsynced and read back.
"""

from __future__ import annotations

import os

from agent import layout

HEADER = "# GRUB Environment Block\n"
SIZE = 1024
SECTOR = 512
VARS = ("basalt_slot", "basalt_try", "basalt_tries")


class BootSelectionError(OSError):
    pass


class Selection:
    """``committed``: the slot booted when no trial is armed; ``trial``: a slot armed for a trial
    boot; ``tries``: the boots it has left (0: it was booted, or never will be). (No dataclass:
    PID 1 reads this at boot, and ``dataclasses`` costs imports.)"""

    __slots__ = ("committed", "trial", "tries")

    def __init__(self, committed: str, trial: str | None = None, tries: int = 0):
        self.committed, self.trial, self.tries = committed, trial, tries if trial else 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selection) and (self.committed, self.trial, self.tries) == \
            (other.committed, other.trial, other.tries)

    def __repr__(self) -> str:
        return f"Selection(committed={self.committed!r}, trial={self.trial!r}, tries={self.tries})"

    def to_json(self) -> dict[str, object]:
        return {"committed": self.committed, "trial": self.trial, "tries": self.tries}

    def next_boot(self) -> str:
        return self.trial if self.trial and self.tries > 0 else self.committed


def parse(block: bytes) -> dict[str, str]:
    text = block.decode("utf-8", "replace")
    if not text.startswith(HEADER):
        raise BootSelectionError("not a GRUB environment block (its header is missing)")
    out = {}
    for line in text[len(HEADER):].split("\n"):
        if line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        out[name] = value
    return out


def format_block(values: dict[str, str]) -> bytes:
    for name, value in values.items():
        if "\n" in value or "\\" in value or "=" in name:
            raise BootSelectionError(f"cannot store {name}={value!r} in the environment block")
    text = HEADER + "".join(f"{k}={v}\n" for k, v in values.items())
    if len(text) > SECTOR:
        raise BootSelectionError("the boot selection does not fit one sector of the environment block")
    return (text + "#" * (SIZE - len(text))).encode()


class GrubEnv:
    """The GRUB environment block as the boot selection. ``path`` is the file on the mounted boot
    partition; writing needs it mounted read-write (``slots.writable_boot``)."""

    name = "grub"

    def __init__(self, path: str = layout.RUN_MEDIUM + layout.GRUB_ENV):
        self.path = path

    def values(self) -> dict[str, str]:
        try:
            with open(self.path, "rb") as f:
                return parse(f.read(SIZE))
        except FileNotFoundError:
            return {}

    def read(self) -> Selection:
        v = self.values()
        committed = v.get("basalt_slot") if v.get("basalt_slot") in layout.SLOTS else "a"
        trial = v.get("basalt_try") if v.get("basalt_try") in layout.SLOTS else None
        tries = int(v["basalt_tries"]) if v.get("basalt_tries", "").isdigit() else 0
        return Selection(committed or "a", trial, tries if trial else 0)

    def write(self, selection: Selection) -> None:
        values = {k: v for k, v in self.values().items() if k not in VARS}
        values.update({"basalt_slot": selection.committed, "basalt_try": selection.trial or "",
                       "basalt_tries": str(selection.tries if selection.trial else 0)})
        block = format_block(values)
        flags = os.O_RDWR | os.O_CREAT
        fd = os.open(self.path, flags, 0o644)
        try:
            os.pwrite(fd, block, 0)
            os.ftruncate(fd, SIZE)
            os.fsync(fd)
            if os.pread(fd, SIZE, 0) != block:
                raise BootSelectionError(f"{self.path} reads back differently from what was written")
        finally:
            os.close(fd)

    # What the upgrade and health code use.
    def arm(self, slot: str, tries: int = 1) -> None:
        """A one-shot (``tries`` boots) trial of ``slot``; the committed slot stays committed."""
        self.write(Selection(self.read().committed, slot, tries))

    def commit(self, slot: str) -> None:
        """``slot`` becomes the committed slot; any trial is over."""
        self.write(Selection(slot))

    def disarm(self) -> None:
        self.write(Selection(self.read().committed))


def backend(medium: str = layout.RUN_MEDIUM) -> GrubEnv:
    """The boot selection of this node's boot loader."""
    return GrubEnv(medium + layout.GRUB_ENV)
