"""Power cuts during an upgrade and during the trial boot that follows it, in QEMU.

A node on a qcow2 disk boots once from power-on to where the cuts start and is kept there as two
snapshots (QEMU's savevm, in the disk itself): "v1", the old version ready with the new bundle on
its state partition, and "v2", the new version just written to the other slot with its trial
armed. Each cut restores one of them in a new QEMU (seconds, not a boot), starts the upgrade or the
reboot into the trial, and kills QEMU after a random delay within how long that takes (both
measured while preparing: the upgrade itself, and the boot from power-on to a node that answers,
which is how long the trial boot runs before the node has settled it). Then the state partition is checked
with ``e2fsck`` as the next mount would see it, and the node boots from power-on, as after a real
cut, and must come up on a whole slot with its trial settled and its state kept.

Used by the boot tests (tests/boot/test_ab_upgrade.py, 10 cuts) and by the long soak outside CI
(``python -m builder.bench.trials --power-cuts 100``, docs/upgrades.md).
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import layout
from builder.vm.bootfiles import qemu_img
from builder.vm.qemu import READY, Guest

PROBE = layout.VAR_LIB + "/probe"
BUNDLE = layout.VAR_LIB + "/new.bundle"
UPGRADE = f"basalt upgrade --force --no-reboot {BUNDLE}"


def state_is_clean(disk: Path, work: Path) -> str:
    """``e2fsck -fn`` of the disk's state partition as the next mount sees it (its journal replayed,
    on a copy): '' when clean, else what e2fsck said."""
    raw, copy = work / "disk.raw", work / "state.ext4"
    qemu_img("convert", "-O", "raw", str(disk), str(raw))  # the disk's current state, sparse
    try:
        table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, text=True,
                                          check=True).stdout)["partitiontable"]["partitions"]
        part = next(p for p in table if p.get("name") == layout.STATE_LABEL)
        subprocess.run(["dd", f"if={raw}", f"of={copy}", "bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse",
                        f"skip={part['start'] * 512}", f"count={part['size'] * 512}", "status=none"], check=True)
        subprocess.run(["e2fsck", "-p", "-E", "journal_only", str(copy)], capture_output=True, text=True)
        proc = subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True)
        return "" if proc.returncode == 0 else proc.stdout + proc.stderr
    finally:
        raw.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)


def settled(guest: Guest, key: Path, settle_s: float, timeout: float) -> dict[str, Any]:
    """Ready, SSH up, and the trial (if this boot is one) settled by the node itself; its status."""
    guest.wait_for(READY, timeout)
    guest.wait_ssh(key)
    deadline = time.monotonic() + settle_s
    while True:
        status: dict[str, Any] = json.loads(guest.ssh("basalt status --json", key, timeout=120))
        if status["boot"]["trial"] is None or time.monotonic() > deadline:
            return status
        time.sleep(1)


def prepare(image: Path, bundle: Path, key: Path, disk: Path, size_mib: int, timeout: float) -> dict[str, float]:
    """A qcow2 ``disk`` over ``image`` (which stays as it is), booted once to the snapshots the
    cuts start from: "v1" and "v2" (this module's docstring). Returns the windows the cuts fall
    in, in seconds: ``upgrade`` (how long ``basalt upgrade`` ran) and ``boot`` (power-on to SSH)."""
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(image.resolve()), "-F", "raw", str(disk), f"{size_mib}M")
    started = time.monotonic()
    with Guest(None, boot_disk=disk, boot_disk_in_place=True) as guest:
        guest.wait_for(READY, timeout)
        guest.wait_ssh(key)
        boot_s = time.monotonic() - started
        guest.ssh(f"echo kept-42 > {PROBE}; cat > {BUNDLE}; sync", key, stdin=bundle, timeout=300)
        guest.snapshot("v1")
        started = time.monotonic()
        said = guest.ssh(f"{UPGRADE} 2>&1; echo rc=$?", key, timeout=300)
        upgrade_s = time.monotonic() - started
        if not said.endswith("rc=0"):
            raise RuntimeError(f"the upgrade to cut into failed: {said}")
        guest.ssh("sync", key)
        guest.snapshot("v2")
    return {"upgrade": round(upgrade_s, 1), "boot": round(boot_s, 1)}


class Laps:
    """Seconds per step, each step timed from the end of the one before: ``lap(step)`` ends one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.mark = time.monotonic()

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = round(now - self.mark, 1)
        self.mark = now


def cuts(disk: Path, key: Path, work: Path, count: int, seed: int, windows: dict[str, float], settle_s: float,
         timeout: float = 300) -> Iterator[dict[str, Any]]:
    """``count`` cuts on a ``prepare``d disk, half during the upgrade, half during the trial boot,
    each at a random moment within its ``windows`` (``prepare``'s; a little past their end, so that
    the moment just after is cut too); one record each: when it was cut, what ``e2fsck`` said of the
    state partition ('' when clean), the node's status once booted again (or the error that kept it
    from booting and settling), and the seconds each step took."""
    rng = random.Random(seed)
    for n in range(count):
        during_upgrade = n < count // 2
        record: dict[str, Any] = {"cut": n, "seed": seed}
        lap = Laps()
        with Guest(None, boot_disk=disk, boot_disk_in_place=True, loadvm="v1" if during_upgrade else "v2") as guest:
            guest.wait_ssh(key)
            lap("restore")
            if during_upgrade:
                guest.ssh(f"({UPGRADE} > /dev/console 2>&1 &)", key)
                delay = rng.uniform(0.0, windows["upgrade"] * 1.2)
            else:
                guest.ssh("(sleep 1; basalt reboot) >/dev/null 2>&1 &", key)
                guest.wait_for(r"basalt: reboot now", 120)
                delay = rng.uniform(0.0, windows["boot"] * 1.2)
            lap("start")
            time.sleep(delay)
            record["when"] = f"{'upgrade' if during_upgrade else 'trial boot'}+{delay:.1f}s"
        lap("cut")
        record["fsck"] = state_is_clean(disk, work)
        lap("fsck")
        with Guest(None, boot_disk=disk, boot_disk_in_place=True) as guest:  # from power-on
            try:
                guest.wait_for(READY, timeout)
                lap("boot")
                record["status"] = settled(guest, key, settle_s, timeout)
                record["probe"] = guest.ssh(f"cat {PROBE}", key)
                record["error"] = None
            except (TimeoutError, RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                record["status"], record["probe"] = None, None
                record["error"] = f"{exc}"[:2000]
        lap("settle")
        record["seconds"] = lap.seconds
        yield record


def stranded(record: dict[str, Any], versions: tuple[str, ...]) -> str:
    """Why a cut's outcome is not a node on a whole slot, settled, with its state: '' when it is."""
    s = record["status"]
    if record["error"]:
        return f"did not boot and settle: {record['error']}"
    if record["fsck"]:
        return f"the state partition is not clean: {record['fsck']}"
    if s["boot"]["trial"] is not None:
        return f"the trial did not settle: {s['boot']}"
    if s["slot"] != s["boot"]["committed"] or s["version"] not in versions:
        return f"not on its committed slot or a known version: slot {s['slot']}, version {s['version']}, {s['boot']}"
    if record["probe"] != "kept-42":
        return f"the state written before the cut is gone: {record['probe']!r}"
    return ""
