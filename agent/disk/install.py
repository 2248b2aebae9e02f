"""``basalt install``: put the running live system on a disk, as the A/B disk the ISO's plan
describes (``/basalt/install/plan.json``, made by builder/media/abdisk.py: the same layout as the raw
image). Interactive (lists the disks and asks), or unattended from the config's ``install:``
section (k3OS's keys) or the kernel command line (``basalt.install.*`` / ``k3os.install.*``).

Nothing is written until every check has passed: the disk exists, is a whole writable disk, is not
the one this system booted from, has nothing mounted or in use, is large enough (and, without
``--force``, is not removable), and the config to install validates. The write order keeps a
half-done install from looking finished: the disk is first made blank (no table), the partitions'
contents are written and slot A read back and compared, then the table, the state partition (the
image's /var, /home, /root, /opt, the merged config and the SSH host keys), and last the boot
partition's files and GRUB's BIOS embedding, without which no firmware boots the disk.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from agent import files, http, layout, system
from agent.config.section import install_section as section
from agent.disk import blockdev, installplan, partitions, targets
from agent.disk.targets import Host, Target, describe, listing, size_text
from agent.errors import BasaltError, Problem

MEDIUM = layout.RUN_MEDIUM
WORK = layout.RUN_INSTALL
BLKRRPART = 0x125F
CHUNK = 1 << 20
MAX_ISO = 8 << 30  # install.iso_url: far more than a Basalt ISO
LIST_HINT = "basalt install --list shows the disks"


def refuse(path: str, message: str, hint: str) -> BasaltError:
    return BasaltError(Problem(f"{path}: {message}; nothing was written", path="install.device", hint=hint))


# How basalt install words each refusal (agent/disk/targets.py makes them).
WORDS = targets.Words(
    not_a_disk=("is not a disk (loop, RAM, device-mapper and RAID devices are not installed to)", LIST_HINT),
    partition=("is a partition of /dev/{owner}, not a disk", "give the whole disk: basalt install /dev/{owner}"),
    missing=("no such disk", LIST_HINT),
    booted=("this system booted from it ({booted})",
            "install to another disk; a node installed there upgrades itself instead"),
    readonly=("is read-only{cdrom}", LIST_HINT),
    busy=("is in use: {busy}", f"unmount it first; a live system uses a disk's {layout.STATE_LABEL} partition for "
          "/var: boot the ISO with basalt.state=none to leave it alone"),
    too_small=("is too small: {have_mib} MiB, the layout needs {need_mib} MiB",
               "use a larger disk, or an image definition with smaller slot_mib/boot_mib"),
    removable=("is a removable disk", "--force (install.force) installs to it anyway"),
)


def check_target(device: str, host: Host, plan: installplan.Plan | None = None, force: bool = False,
                 no_format: bool = False) -> Target:
    """The disk to install to, after every refusal that applies (nothing has been written). Without
    a plan (none on this medium), only what the disk itself rules out."""
    target = targets.whole_disk(device, host, WORDS, refuse)
    if plan is not None:
        check_fits(target, plan, host, force, no_format)
    return target


def check_fits(target: Target, plan: installplan.Plan, host: Host, force: bool = False,
               no_format: bool = False) -> None:
    """The refusals that depend on the disk to write: its size, removable, an existing layout."""
    targets.fits(target, plan.min_mib << 20, False, force, WORDS, refuse)
    if no_format:
        existing = existing_layout(target, plan, host)
        if existing:
            raise refuse(target.path, existing, "install without no_format to partition the disk")


def existing_layout(target: Target, plan: installplan.Plan, host: Host) -> str:
    """Why the disk's present partitions cannot be reused (no_format), or ""."""
    names = [files.read_text(f"{host.sys_block}/{target.name}/{p}/uevent") for p in target.partitions]
    have = [next((line[9:] for line in u.splitlines() if line.startswith("PARTNAME=")), "") for u in names]
    want = [p.name for p in plan.partitions]
    if have != want:
        return (f"no_format: its partitions ({', '.join(n or '?' for n in have) or 'none'}) "
                f"are not Basalt's ({', '.join(want)})")
    for part, spec in zip(target.partitions, plan.partitions, strict=True):
        size = int(files.read_text(f"{host.sys_block}/{target.name}/{part}/size", "0").strip() or 0) * 512
        if spec.size_mib and size < spec.size_mib << 20:
            return f"no_format: partition {spec.name} is {size >> 20} MiB, smaller than {spec.size_mib} MiB"
    return ""


# --- settings ----------------------------------------------------------------------------------

@dataclass
class Settings:
    device: str | None = None
    silent: bool = False
    power_off: bool = False
    reboot: bool = False
    no_format: bool = False
    force: bool = False
    config_url: str | None = None
    iso_url: str | None = None
    debug: bool = False


def settings_from(config: dict[str, Any]) -> Settings:
    s = section(config)
    return Settings(device=s.get("device"), silent=bool(s.get("silent")), power_off=bool(s.get("power_off")),
                    reboot=bool(s.get("reboot")), no_format=bool(s.get("no_format")), force=bool(s.get("force")),
                    config_url=s.get("config_url"), iso_url=s.get("iso_url"), debug=bool(s.get("debug")))


# --- the config that goes to the disk ----------------------------------------------------------

def config_to_install(settings: Settings, cmdline: str, fetch: Callable[[str], bytes] | None = None) -> str:
    """The node's merged config (every source of this live boot), with ``config_url``'s config
    layered on top; without the install section, which has done its work. Validated; YAML text."""
    import yaml

    from agent.config import sources
    from agent.config.validate import check_text
    merged = sources.gather(cmdline)
    if merged.problems:
        raise BasaltError([*merged.problems, Problem(
            "the live system's config has problems; nothing was written",
            hint="basalt config validate shows them; fix the source, then install")])
    if settings.config_url:
        from agent.config.datasources import get
        try:
            text = (fetch or get)(settings.config_url).decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise BasaltError(Problem(f"install.config_url: {exc}; nothing was written",
                                      hint="check the URL and the network (basalt status shows the addresses)")
                              ) from None
        loaded = check_text(text, settings.config_url)
        if loaded.problems:
            raise BasaltError([*loaded.problems, Problem("install.config_url: the config has problems; "
                                                         "nothing was written")])
        merged.add(settings.config_url, loaded.value)
    value: dict[str, Any] = json.loads(json.dumps(merged.value))
    for sec in ("basalt", "k3os"):
        if isinstance(value.get(sec), dict):
            value[sec].pop("install", None)
            if not value[sec]:
                del value[sec]
    text = (f"# Written by basalt install from: {', '.join(merged.sources) or 'no config'}\n"
            + (yaml.safe_dump(value, sort_keys=True, default_flow_style=False) if value else ""))
    loaded = check_text(text, layout.STATE_CONFIG)
    if loaded.problems:  # the merge of valid sources is valid; this guards the dump
        raise BasaltError([*loaded.problems, Problem("internal: the merged config does not validate")])
    return text


# --- writing -----------------------------------------------------------------------------------

class Progress:
    """A percentage on one line for a terminal, every 10% on a log."""

    lines = False  # unattended: a log on the console, not a live line

    def __init__(self, label: str, total: int, out: Any = None):
        self.label, self.total, self.done, self.shown = label, max(total, 1), 0, -1
        self.out = out or sys.stdout
        self.tty = self.out.isatty() and not Progress.lines

    def update(self, n: int) -> None:
        self.done += n
        pct = min(100, self.done * 100 // self.total)
        if (self.tty and pct != self.shown) or pct // 10 != self.shown // 10:
            self.shown = pct
            end = "\r" if self.tty and pct < 100 else "\n"
            self.out.write(f"  {self.label}: {pct:3d}% of {size_text(self.total)}{end}")
            self.out.flush()


def _say(message: str) -> None:
    print(f"basalt install: {message}", flush=True)


def _wait_for(path: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise BasaltError(Problem(f"{path} did not appear after the partition table was re-read"))
        time.sleep(0.1)


def _partition_device(target: Target, number: int) -> str:
    sep = "p" if target.name[-1].isdigit() else ""
    return f"/dev/{target.name}{sep}{number}"


def _mounted(device: str, fstype: str, where: str, readonly: bool = False) -> Any:
    import contextlib

    from agent import system

    @contextlib.contextmanager
    def cm() -> Any:
        os.makedirs(where, exist_ok=True)
        system.mount(device, where, fstype, 1 if readonly else 0)  # MS_RDONLY
        try:
            yield where
        finally:
            os.sync()
            system.umount(where)
    return cm()


def load_plan(medium: str = MEDIUM) -> installplan.Plan:
    return installplan.load(medium + layout.INSTALL_PLAN)


def write_disk(target: Target, plan: installplan.Plan, config_text: str, medium: str = MEDIUM,
               no_format: bool = False, work: str = WORK, keys_from: str = layout.SSH_STATE) -> None:
    """Write the planned disk onto ``target`` (checked already), in the order the module's
    docstring gives."""
    disk = plan.disk(seed=str(uuid.uuid4()))  # every installed disk has its own ids
    placed = partitions.place(disk, target.size >> 20) if not no_format else existing_placed(target, disk)
    by_content = {pl.partition.content: pl for pl in placed if pl.partition.content}
    fd = os.open(target.path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)  # EBUSY if anything holds it
    with os.fdopen(fd, "r+b", buffering=0) as f:
        w = blockdev.Device(f)
        total = target.size // partitions.SECTOR
        if not no_format:
            _say(f"clearing the partition tables of {target.path}")
            w.zero(0, partitions.MIB)
            w.zero((total - partitions.MIB_SECTORS) * partitions.SECTOR, partitions.MIB)
        for what in ("slot", "state", "boot"):
            pl = by_content.get(what)
            if pl is None or (what == "state" and no_format):
                continue
            path = medium + plan.images[what]
            label = {"slot": f"slot A ({pl.partition.name})", "state": "state partition",
                     "boot": "boot partition"}[what]
            size = os.path.getsize(path) if what == "slot" else pl.sectors * partitions.SECTOR
            start, room = pl.start * partitions.SECTOR, pl.sectors * partitions.SECTOR
            with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as opened:
                src = cast(BinaryIO, opened)
                digest, written = w.copy(src, start, room, Progress(f"writing {label}", size).update)
                if src.read(1):
                    raise BasaltError(Problem(f"an image is larger than its partition ({room >> 20} MiB)"))
            if what == "slot":
                verify(w, start, written, digest, label)
        other = next((pl for pl in placed if pl.partition.name == layout.SLOT_LABELS["b"]), None)
        if other is not None:
            w.zero(other.start * partitions.SECTOR, partitions.MIB)  # slot B: empty, not an old squashfs
        if not no_format:
            _say("writing the partition table")
            partitions.write_table(f, disk, placed, total)
        f.flush()
        os.fsync(fd)
        reread(fd)
    boot, state, slot = by_content["boot"], by_content["state"], by_content["slot"]
    for pl in (boot, state, slot):
        _wait_for(_partition_device(target, pl.number))
    _say("seeding the state partition")
    with _mounted(_partition_device(target, slot.number), "squashfs", f"{work}/slot", readonly=True) as image, \
            _mounted(_partition_device(target, state.number), "ext4", f"{work}/state") as st:
        seed_state(image, st, config_text, keys_from)
    _say("writing the boot partition")
    with _mounted(_partition_device(target, boot.number), "vfat", f"{work}/boot") as bt:
        for entry in plan.files:
            dest = bt + entry.path
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if not entry.medium:
                files.write_atomic(dest, entry.data)
                continue
            with open(medium + entry.medium, "rb") as src, files.Replacing(dest) as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
    if plan.bios and layout.BIOS_LABEL in {p.partition.name for p in placed}:
        bios = next(pl for pl in placed if pl.partition.name == layout.BIOS_LABEL)
        _say("installing GRUB for BIOS")
        with open(target.path, "r+b", buffering=0) as f, open(medium + plan.bios[0], "rb") as b, \
                open(medium + plan.bios[1], "rb") as c:
            partitions.embed_bios(f, b.read(), c.read(), bios.start, bios.sectors)
    os.sync()


def existing_placed(target: Target, disk: partitions.Disk) -> list[partitions.Placed]:
    """no_format: the plan's partitions where the disk's GPT has them (checked by name already)."""
    with open(target.path, "rb") as f:
        _, entries = partitions.read_gpt(f)
    by_name = {e.name: e for e in entries}
    return [partitions.Placed(p, by_name[p.name].number, by_name[p.name].first,
                              by_name[p.name].last - by_name[p.name].first + 1) for p in disk.partitions]


def verify(w: blockdev.Device, offset: int, length: int, digest: str, label: str) -> None:
    """Read back what was written (past the page cache) and compare its sha256."""
    if not w.reads_back(offset, length, digest):
        raise BasaltError(Problem(f"{label} reads back differently from what was written: the disk is failing",
                                  hint="the disk is left without a boot loader; use another disk"))
    _say(f"{label}: {length >> 20} MiB written and verified (sha256 {digest[:16]}…)")


def reread(fd: int) -> None:
    """The kernel re-reads the partition table (a regular file, in tests, has none to re-read)."""
    for _ in range(50):
        try:
            fcntl.ioctl(fd, BLKRRPART)
            return
        except OSError as exc:
            if exc.errno == 25:  # ENOTTY: not a block device
                return
            time.sleep(0.1)
    raise BasaltError(Problem("the kernel did not re-read the new partition table (the disk is busy)"))


def seed_state(image: str, state: str, config_text: str, keys_from: str) -> None:
    """The state partition as a first boot would make it (the image's STATE_DIRS), plus the
    config (mode 0600) and this live system's SSH host keys, so the node keeps its identity."""
    for d in layout.STATE_DIRS:
        if os.path.isdir(f"{image}/{d}") and not os.path.isdir(f"{state}/{d}"):
            os.makedirs(f"{state}/{d}.new")
            subprocess.run(["cp", "-a", f"{image}/{d}/.", f"{state}/{d}.new/"], check=True)
            os.rename(f"{state}/{d}.new", f"{state}/{d}")
    config = state + layout.STATE_CONFIG
    files.write_atomic(config, config_text, 0o600, makedirs=True)
    keys = state + layout.SSH_STATE
    if os.path.isdir(keys_from) and not (os.path.isdir(keys) and os.listdir(keys)):  # keep a disk's own keys
        os.makedirs(keys, mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(keys_from)):
            with open(f"{keys_from}/{name}", "rb") as src:
                data = src.read()
            fd = os.open(f"{keys}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)


# --- the command -------------------------------------------------------------------------------

def download_iso(url: str, work: str = WORK) -> str:
    """``install.iso_url``'s ISO, downloaded (resumed and retried) into ``work`` (under /run: a
    tmpfs, root's alone)."""
    os.makedirs(work, 0o700, exist_ok=True)
    iso = f"{work}/medium.iso"
    _say(f"downloading {url}")
    bars: list[Progress] = []

    def progress(got: int, total: int) -> None:
        if not bars:
            bars.append(Progress("downloading the ISO", total))
        bars[0].update(got - bars[0].done)

    try:
        http.download(url, iso, MAX_ISO, progress=progress, chunk=CHUNK,
                      on_retry=lambda exc, wait: _say(f"download interrupted ({exc}); resuming in {wait:.0f}s"))
    except http.Failed as exc:
        raise BasaltError(Problem(f"install.iso_url: {url}: cannot download the ISO: {exc.last}",
                                  hint="check the URL and the node's network; a partial download is resumed "
                                       "by the next try")) from None
    return iso


def fetch_iso(url: str, work: str = WORK, public_key: str = layout.LIB_UPGRADE_KEY) -> tuple[str, installplan.Plan]:
    """``install.iso_url``: download the ISO, mount it as the medium, and verify it as an upgrade
    bundle is (installplan.verify_medium: the plan's signature by this node's upgrade key, then
    every file's sha256) before anything is written; the medium and its verified plan."""
    iso, where = download_iso(url, work), f"{work}/medium"
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", "iso9660", "-o", "ro,loop", iso, where], check=True, capture_output=True)
    try:
        _say(f"verifying {url}")
        return where, installplan.verify_medium(lambda path: open(where + path, "rb"), layout.INSTALL_PLAN,
                                                public_key, f"{work}/verify", url)
    except BaseException:
        subprocess.run(["umount", where], check=False, capture_output=True)
        raise


def confirm(target: Target, host: Host, plan: installplan.Plan, answer: Callable[[str], str]) -> None:
    text = answer(f"Everything on {target.path} ({size_text(target.size)}, {target.model}; {describe(target, host)}) "
                  f"will be erased.\nType 'yes' to install Basalt {plan.version} there: ")
    if text.strip().lower() != "yes":
        raise BasaltError(Problem("not confirmed; nothing was written"))


def run(settings: Settings, unattended: bool = False, host: Host | None = None,
        answer: Callable[[str], str] = input) -> int:
    """``basalt install``: check, confirm (unless silent), write, then power off or reboot."""
    import contextlib
    host = host or Host.running()
    Progress.lines = unattended
    os.makedirs(WORK, exist_ok=True)
    lock = os.open(f"{WORK}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise BasaltError(Problem("another basalt install is running")) from None
    with contextlib.ExitStack() as stack:
        medium, verified = MEDIUM, None
        if settings.iso_url:
            medium, verified = fetch_iso(settings.iso_url)
            stack.callback(lambda: subprocess.run(["umount", medium], check=False))
        if not settings.device:
            if unattended or settings.silent:
                raise BasaltError(Problem("no disk to install to", path="install.device",
                                          hint="set install.device (or basalt.install.device=) to e.g. /dev/vda"))
            print(listing(host))
            settings.device = answer("Install to which disk (e.g. /dev/vda)? ").strip()
        target = check_target(settings.device, host)  # what the disk rules out, even with no installer here
        plan = verified or load_plan(medium)
        check_fits(target, plan, host, settings.force, settings.no_format)
        if settings.config_url and unattended:
            wait_for_network()
        text = config_to_install(settings, files.read_text("/proc/cmdline"))
        if not settings.silent:
            confirm(target, host, plan, answer)
        started = time.monotonic()
        _say(f"installing Basalt {plan.version} ({plan.image}) to {target.path} ({size_text(target.size)})")
        write_disk(target, plan, text, medium, settings.no_format)
        _say(f"installed to {target.path} in {time.monotonic() - started:.1f} s")
    action = "poweroff" if settings.power_off else "reboot" if settings.reboot else None
    if action:
        _say(f"{action}: the node boots from {target.path} next")
        system.request_power(action)
    else:
        _say("remove the installation medium and reboot (basalt reboot) to boot from the disk")
    return 0


def wait_for_network(seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(layout.RUN_NETWORK_UP) and time.monotonic() < deadline:
        time.sleep(0.5)
