"""Disks as the installer and the card flasher see them, and may this disk be erased: the one
set of checks ``basalt install`` (on a node) and ``inv flash`` (on the build host) run before
writing anything — the device is a whole disk, not the one the system runs from, not read-only,
nothing on it in use, large enough, and removable or not as the command expects (``--force``
overrides only that). Each command words the refusals its own way (``Words``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import files, layout, system
from agent.disk import partitions
from agent.errors import BasaltError

SYS_BLOCK = "/sys/block"
NOT_DISKS = ("loop", "ram", "zram", "dm-", "md", "nbd")


@dataclass
class Target:
    name: str  # vda
    size: int  # bytes
    model: str
    removable: bool
    readonly: bool
    cdrom: bool
    partitions: list[str] = field(default_factory=list)  # vda1, vda2, ...

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


@dataclass
class Host:
    """What the checks look at, from the running system (or a test's stand-in)."""
    sys_block: str = SYS_BLOCK
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (source, target)
    swaps: list[str] = field(default_factory=list)
    boot_devices: list[str] = field(default_factory=list)  # the medium, the root: /dev/sr0, /dev/vda3
    probe: Callable[[str], str] = lambda device: ""  # what is on a device: "vfat BASALT_BOOT"

    @classmethod
    def running(cls) -> Host:
        mounts = [(src, target) for src, target, _ in system.mounts()]
        swaps = [line.split()[0] for line in files.read_text("/proc/swaps").splitlines()[1:] if line.strip()]
        boot = [d for d in (files.read_text(layout.RUN_MEDIUM_DEVICE).strip(), _root_device(mounts)) if d]
        return cls(mounts=mounts, swaps=swaps, boot_devices=boot, probe=probe)


def _root_device(mounts: list[tuple[str, str]]) -> str:
    """The device under /: a slot's partition, or the loop device of the live squashfs (whose
    backing file is on the medium, already counted)."""
    roots = [src for src, target in mounts if target == "/" and src.startswith("/dev/")]
    return roots[-1] if roots else ""


def probe(device: str) -> str:
    """What is on ``device``, from its first blocks: ``TYPE LABEL`` of a filesystem (ext4, vfat,
    iso9660, squashfs, swap) or its partition table, or ""."""
    try:
        with open(device, "rb") as f:
            head = f.read(36 * 1024)
    except OSError:
        return ""
    return identify(head)


def identify(head: bytes) -> str:
    from agent.config.datasources import fs_label
    found = fs_label(head)
    if found:
        label = found[1].decode(errors="replace").strip()
        return " ".join(filter(None, (found[0], "" if label == "NO NAME" else label)))
    if head[:4] == b"hsqs":
        return "squashfs"
    if len(head) >= 4096 and head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    if len(head) >= 520 and head[512:520] == partitions.GPT_SIGNATURE:
        return "GPT partition table"
    if len(head) >= 512 and head[510:512] == b"\x55\xaa" and head[450] != 0:
        return "MBR partition table"
    return ""


def disks(sys_block: str = SYS_BLOCK) -> list[Target]:
    """The machine's disks (not loop, RAM, device-mapper or RAID devices), by name."""
    out = []
    for name in sorted(os.listdir(sys_block)) if os.path.isdir(sys_block) else []:
        base = os.path.join(sys_block, name)
        size = int(files.read_text(f"{base}/size", "0").strip() or 0) * 512
        if name.startswith(NOT_DISKS) or size == 0:
            continue
        model = " ".join(files.read_text(f"{base}/device/{f}").strip() for f in ("vendor", "model")).strip()
        parts = sorted((p for p in os.listdir(base) if os.path.isfile(f"{base}/{p}/partition")),
                       key=lambda p: int(files.read_text(f"{base}/{p}/partition").strip()))
        out.append(Target(name, size, model or "-", files.read_text(f"{base}/removable").strip() == "1",
                          files.read_text(f"{base}/ro").strip() == "1", name.startswith("sr") or
                          files.read_text(f"{base}/device/type").strip() == "5", parts))
    return out


def disk_of(device: str, sys_block: str = SYS_BLOCK) -> str:
    """``vda`` for /dev/vda3 or /dev/vda; "" when it is no disk's."""
    name = os.path.basename(os.path.realpath(device)) if device.startswith("/dev/") else device
    for d in os.listdir(sys_block) if os.path.isdir(sys_block) else []:
        if d == name or os.path.isfile(os.path.join(sys_block, d, name, "partition")):
            return d
    return ""


def size_text(size: int) -> str:
    gib = size / (1 << 30)
    return f"{gib:.1f} GiB" if gib >= 1 else f"{size >> 20} MiB"


def in_use(target: Target, host: Host) -> list[str]:
    """What holds the disk: mounts, swap, device-mapper/RAID holders (of it or its partitions)."""
    names = {target.name, *target.partitions}
    where: dict[str, list[str]] = {}
    for src, target_dir in host.mounts:
        if src.startswith("/dev/") and os.path.basename(src) in names:
            where.setdefault(src, []).append(target_dir)
    found = [f"{src} is mounted at {', '.join(dirs)}" for src, dirs in where.items()]
    found += [f"{s} is a swap area" for s in host.swaps if os.path.basename(s) in names]
    for n in sorted(names):
        holders = os.path.join(host.sys_block, target.name, *([] if n == target.name else [n]), "holders")
        found += [f"/dev/{n} is held by {h}" for h in (sorted(os.listdir(holders)) if os.path.isdir(holders) else [])]
    return found


def describe(target: Target, host: Host) -> str:
    """What is on the disk, for the listing and the confirmation."""
    if target.cdrom:
        return "optical drive"
    parts = []
    for p in target.partitions:
        what = host.probe(f"/dev/{p}")
        parts.append(f"{p} ({what})" if what else p)
    if parts:
        return ", ".join(parts)
    whole = host.probe(target.path)
    return whole or "empty (no partitions)"


def listing(host: Host) -> str:
    booted = {disk_of(d, host.sys_block) for d in host.boot_devices}
    rows = [("DEVICE", "SIZE", "MODEL", "REMOVABLE", "ON IT")]
    for t in disks(host.sys_block):
        note = " [booted from]" if t.name in booted else ""
        rows.append((t.path, size_text(t.size), t.model, "yes" if t.removable else "no", describe(t, host) + note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows)


@dataclass(frozen=True)
class Words:
    """A command's (message, hint) for each refusal. Fields the texts may use: {owner} (the disk a
    partition is on), {booted}, {cdrom}, {busy}, {real} (the device's real path), {have_mib},
    {need_mib}, {model}, {size}."""
    not_a_disk: tuple[str, str]  # a loop, RAM, device-mapper or RAID device
    partition: tuple[str, str]
    missing: tuple[str, str]
    booted: tuple[str, str]  # the system runs from it
    readonly: tuple[str, str]
    busy: tuple[str, str]
    too_small: tuple[str, str]
    removable: tuple[str, str]  # removable when it should not be, or the other way round


Refuse = Callable[[str, str, str], BasaltError]  # (device, message, hint) -> the error to raise


def _refusal(refuse: Refuse, device: str, words: tuple[str, str], **fields: object) -> BasaltError:
    return refuse(device, words[0].format(**fields), words[1].format(**fields))


def whole_disk(device: str, host: Host, words: Words, refuse: Refuse) -> Target:
    """The disk ``device`` names, after what the disk itself rules out: not a whole disk, the
    system's own, read-only, in use."""
    real = os.path.realpath(device)
    name = os.path.basename(real)
    found = {t.name: t for t in disks(host.sys_block)}
    if name not in found:
        owner = disk_of(real, host.sys_block)
        if owner == name:
            raise _refusal(refuse, device, words.not_a_disk)
        if owner:
            raise _refusal(refuse, device, words.partition, owner=owner)
        raise _refusal(refuse, device, words.missing)
    target = found[name]
    booted = sorted({b for b in host.boot_devices if disk_of(b, host.sys_block) == name})
    if booted:
        raise _refusal(refuse, device, words.booted, booted=", ".join(booted))
    if target.cdrom or target.readonly:
        raise _refusal(refuse, device, words.readonly, cdrom=" (an optical drive)" if target.cdrom else "")
    busy = in_use(target, host)
    if busy:
        raise _refusal(refuse, device, words.busy, busy="; ".join(busy), real=real)
    return target


def fits(target: Target, need: int, removable: bool, force: bool, words: Words, refuse: Refuse) -> None:
    """What depends on what is to be written: ``need`` bytes, and a disk that is ``removable`` (a
    card to flash) or not (a node's disk to install to), unless ``force``."""
    if target.size < need:
        raise _refusal(refuse, target.path, words.too_small, have_mib=target.size >> 20, need_mib=need >> 20)
    if target.removable != removable and not force:
        raise _refusal(refuse, target.path, words.removable, model=target.model, size=size_text(target.size))
