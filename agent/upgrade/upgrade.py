"""``basalt upgrade SOURCE`` and ``basalt rollback``: A/B upgrades of an installed node.

Upgrade: fetch the bundle (an http(s) URL, resumed and retried; or a file, such as the payload
inside the OCI upgrade image), check its signature, every part's hash, its arch and image name,
that its version has not failed here before and is not older than the running one (unless
``--force``: a downgrade is a decision, not an accident) and that it fits the inactive slot —
all before anything is written — then write the inactive slot (its squashfs read back and
compared), arm a one-shot trial boot of it (agent/upgrade/bootsel.py) and reboot. The trial boot's
health gate (agent/upgrade/health.py) commits it, or the boot loader comes back to the committed slot.

The slot booted now is never written, and the boot selection is changed last, in one sector
write: power lost at any point leaves the node booting a slot that was healthy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from typing import Any

from agent import files, http, layout, system
from agent.disk import blockdev
from agent.errors import BasaltError, Problem
from agent.upgrade import bootsel, bundle, slots

CHUNK = 4 << 20
ARCHES = {"x86_64": "x86_64", "aarch64": "arm64"}
ATTEMPTS = 5
MAX_BUNDLE = 2 << 30  # far more than any slot holds (the slot's size is checked against the bundle's head)


def say(message: str) -> None:
    print(f"basalt upgrade: {message}", file=sys.stderr, flush=True)


def node_arch() -> str:
    machine = os.uname().machine
    return ARCHES.get(machine, machine)


def lock() -> int:
    os.makedirs(layout.RUN_UPGRADE, exist_ok=True)
    fd = os.open(layout.RUN_UPGRADE + "/lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BasaltError.simple("another basalt upgrade or rollback is running", hint="wait for it") from None
    return fd


def check_node(booted: str, selection: bootsel.Selection) -> None:
    if booted not in layout.SLOTS:
        raise BasaltError.simple("upgrades need an installed disk: this node runs live from its medium",
                                 hint="install it first (basalt install), then upgrade the disk")
    if selection.committed != booted:
        raise BasaltError.simple(f"this boot is a trial of slot {booted}, not yet committed (the committed slot "
                                 f"is {selection.committed})",
                                 hint="wait for its health gate to commit it (basalt status), then upgrade")


# --- fetching ----------------------------------------------------------------------------------

def expected_size(man: dict[str, Any]) -> int:
    """The most a bundle with this signed manifest can be: its parts, each with a tar header and
    padding, the manifest and signature, and the end blocks (a server sending more is refused)."""
    return sum(int(part["size"]) + 1024 for part in man["parts"].values()) + (64 << 10)


def download(url: str, directory: str = layout.UPGRADE_DOWNLOADS, attempts: int = ATTEMPTS,
             timeout: float = 30.0, limit: int = 0) -> str:
    """The bundle at ``url`` in ``directory``, resumed from a partial copy and retried with backoff;
    no more than ``limit`` bytes (the signed manifest's size), and only if they fit there."""
    os.makedirs(directory, 0o700, exist_ok=True)
    final = os.path.join(directory, hashlib.sha256(url.encode()).hexdigest()[:16] + ".bundle")
    if limit:  # the size is known: what is still to come must fit (a partial copy is resumed)
        have = os.path.getsize(final + ".part") if os.path.exists(final + ".part") else 0
        stat = os.statvfs(directory)
        if stat.f_bavail * stat.f_frsize < limit - have:
            raise BasaltError(Problem(f"{url}: the bundle ({limit >> 20} MiB) does not fit in {directory} "
                                      f"({stat.f_bavail * stat.f_frsize >> 20} MiB free)",
                                      hint="free space on the state partition (old logs, images), or upgrade from a "
                                           "file"))
    limit = limit or MAX_BUNDLE
    shown = [-1]

    def progress(got: int, total: int) -> None:
        if total and got * 10 // total != shown[0]:
            shown[0] = got * 10 // total
            say(f"downloading {url}: {got >> 20}/{total >> 20} MiB")

    try:
        return http.download(url, final, min(limit, MAX_BUNDLE), attempts, timeout=timeout, progress=progress,
                             chunk=CHUNK,
                             on_retry=lambda exc, wait: say(f"download interrupted ({exc}); resuming in {wait:.0f}s"))
    except http.Failed as exc:
        raise BasaltError(Problem(f"{url}: cannot download the bundle: {exc.last}",
                                  hint="check the URL and the node's network; a partial download is resumed "
                                       "by the next try")) from None


def fetch(source: str, limit: int = 0) -> tuple[str, bool]:
    """A local path to the bundle, and whether it is a download to remove afterwards."""
    if source.startswith(("http://", "https://")):
        return download(source, limit=limit), True
    if not os.path.isfile(source):
        raise BasaltError.simple(f"{source}: no such file", hint="give a .bundle file or an http(s) URL")
    return source, False


# --- checks -----------------------------------------------------------------------------------

def check(man: dict[str, Any], source: str, target: str, state: dict[str, Any], force: bool,
          medium: str = layout.RUN_MEDIUM, slot_bytes: int | None = None, booted: str | None = None) -> None:
    """Every refusal that needs only the bundle's signed manifest, before its parts are read."""
    version = str(man["version"])

    def size(part: str) -> int:
        return int(man["parts"][part]["size"])

    arch = node_arch()
    if man.get("arch") != arch:
        raise bundle.refused(source, f"it is for {man.get('arch')}, this node is {arch}",
                             "use the bundle built from this node's image definition")
    image = slots.build_info(booted or slots.booted(), medium).get("image")
    if not image and not force:
        raise bundle.refused(source, f"this node's slot records no image name, so a bundle for {man.get('image')} "
                             "cannot be told apart from one for another image", "--force installs it anyway")
    if image and man.get("image") != image:
        raise bundle.refused(source, f"it is for image {man.get('image')}, this node runs {image}",
                             "use a bundle built from the same image definition (its name:)")
    failed = state.get("failed", {}).get(version)
    if failed and not force:
        raise bundle.refused(source, f"version {version} failed on this node before ({failed.get('reason')})",
                             "--force tries it again")
    if slot_bytes is not None and size(bundle.ROOT) > slot_bytes:
        raise bundle.refused(source, f"its root filesystem ({size(bundle.ROOT) >> 20} MiB) is larger than slot "
                             f"{target} ({slot_bytes >> 20} MiB)",
                             "build the image smaller, or reinstall with larger slots (slot_mib)")
    stat = os.statvfs(medium)
    present = sum(os.path.getsize(p) for n in (bundle.KERNEL, bundle.INITRD)
                  if os.path.exists(p := f"{medium}{layout.slot_dir(target)}/{n}"))
    need = size(bundle.KERNEL) + size(bundle.INITRD)
    if need > stat.f_bavail * stat.f_frsize + present:
        raise bundle.refused(source, f"its kernel and initramfs ({need >> 20} MiB) do not fit the boot partition",
                             "reinstall with a larger boot partition (boot_mib)")


def preflight(node: Node, man: dict[str, Any], source: str, force: bool) -> str | None:
    """The slot the bundle goes to after every check on its manifest; None when this node already
    runs its version (e.g. the Kubernetes job run again after its reboot)."""
    target = slots.other(node.booted)
    check(man, source, target, slots.load_state(node.state), force, node.medium,
          node.slot_bytes(node.device(target)), node.booted)
    running = slots.build_info(node.booted, node.medium).get("version")
    if str(man["version"]) == running and not force:
        say(f"this node already runs {running} (slot {node.booted}): nothing to do")
        return None
    if running and not force and bundle.compare_versions(str(man["version"]), str(running)) < 0:
        raise bundle.refused(source, f"version {man['version']} is older than {running}, which this node runs",
                             "--force installs an older version (a downgrade)")
    return target


def download_head(url: str, attempts: int = 3, timeout: float = 30.0) -> bytes:
    """The bundle's first ``bundle.HEAD_BYTES`` (a range request; a server that ignores it is read
    no further than that)."""
    try:
        return http.get(url, bundle.HEAD_BYTES, attempts, timeout=timeout, retry_client_errors=False,
                        headers={"Range": f"bytes=0-{bundle.HEAD_BYTES - 1}"})
    except http.Failed as exc:
        raise BasaltError(Problem(f"{url}: cannot download the bundle: {exc.last}",
                                  hint="check the URL and the node's network")) from None


# --- writing ----------------------------------------------------------------------------------

def write_root(b: bundle.Bundle, dev: str) -> None:
    want = b.manifest["parts"][bundle.ROOT]
    size = int(want["size"])
    shown = [-1, 0]  # tenths shown, bytes written

    def progress(n: int) -> None:
        shown[1] += n
        if shown[1] * 10 // max(size, 1) != shown[0]:
            shown[0] = shown[1] * 10 // max(size, 1)
            say(f"writing slot {dev}: {shown[1] >> 20}/{size >> 20} MiB")

    with open(dev, "r+b", buffering=0) as out:
        w = blockdev.Device(out)
        digest, _ = w.copy(b.reader(bundle.ROOT), 0, size, progress)
        if digest != want["sha256"]:
            raise BasaltError.simple(f"the bundle changed while it was written to {dev}",
                                     hint="the slot is not armed; run basalt upgrade again")
        if not w.reads_back(0, size, want["sha256"]):
            raise BasaltError.simple(f"{dev} reads back differently from what was written: the disk is failing",
                                     hint="the slot is not armed; the node keeps booting its committed slot")


def write_file(path: str, src: Any, digest: str) -> None:
    h = hashlib.sha256()
    with files.Replacing(path) as out:
        while data := src.read(CHUNK):
            h.update(data)
            out.write(data)
        if h.hexdigest() != digest:  # raised inside: the target is left as it was
            raise BasaltError.simple(f"the bundle changed while {path} was written", hint="run basalt upgrade again")


def write_slot(b: bundle.Bundle, target: str, dev: str, medium: str = layout.RUN_MEDIUM) -> None:
    """The slot's squashfs, then its kernel and initramfs; its build record last (it marks the slot whole)."""
    import json
    directory = medium + layout.slot_dir(target)
    os.makedirs(directory, exist_ok=True)
    for name in (slots.BUILD_INFO, "version"):  # the slot is not whole until the end
        if os.path.exists(f"{directory}/{name}"):
            os.unlink(f"{directory}/{name}")
    os.sync()
    write_root(b, dev)
    for part in (bundle.KERNEL, bundle.INITRD):
        write_file(f"{directory}/{part}", b.reader(part), b.manifest["parts"][part]["sha256"])
    man = b.manifest
    for name, text in (("version", man["version"] + "\n"),
                       (slots.BUILD_INFO, json.dumps({"version": man["version"], "image": man["image"],
                                                      "built": man["built"]}, sort_keys=True))):
        files.write_atomic(f"{directory}/{name}", text)


def request_reboot() -> None:
    system.request_power("reboot")


class Node:
    """Where this node keeps what an upgrade reads and writes (tests point it at files)."""

    def __init__(self, medium: str = layout.RUN_MEDIUM, key: str = layout.LIB_UPGRADE_KEY,
                 work: str = layout.RUN_UPGRADE, state: str = layout.UPGRADE_STATE, booted: str | None = None,
                 devices: dict[str, str] | None = None, remount: bool = True):
        self.medium, self.key, self.work, self.state, self.remount = medium, key, work, state, remount
        self.booted = booted or slots.booted()
        self.devices = devices or {}

    def device(self, slot: str) -> str:
        return self.devices.get(slot) or slots.device(slot)

    def slot_bytes(self, dev: str) -> int:
        return slots.size_bytes(dev) if dev.startswith("/dev/") else os.path.getsize(dev)

    def boot(self) -> bootsel.GrubEnv:
        return bootsel.backend(self.medium)

    def writable(self) -> Any:
        import contextlib
        return slots.writable_boot(self.medium) if self.remount else contextlib.nullcontext(self.medium)


def install_bundle(node: Node, path: str, source: str, force: bool = False, tries: int = 1) -> dict[str, Any]:
    """Check the bundle at ``path`` and write it to the inactive slot, then arm its trial."""
    check_node(node.booted, node.boot().read())
    b = bundle.open_bundle(path, node.key, node.work, source)
    try:
        target = preflight(node, b.manifest, source, force)
        if target is None:
            return {"result": "current", "version": b.version, "slot": node.booted}
        dev = node.device(target)
        say(f"{source}: signature good; checking {b.manifest['image']} {b.version} part by part")
        bundle.check_parts(b, source)
        event = {"result": "writing", "version": b.version, "image": b.manifest["image"], "slot": target,
                 "from": slots.build_info(node.booted, node.medium).get("version")}
        slots.record(event, path=node.state)
        start = time.monotonic()
        with node.writable():
            write_slot(b, target, dev, node.medium)
            node.boot().arm(target, tries)
        event = {**event, "result": "armed", "write_s": round(time.monotonic() - start, 2)}
        slots.record(event, path=node.state)
        say(f"slot {target} holds {b.version} (written and verified in {event['write_s']}s); its trial boot is "
            f"armed: if it does not pass its health gate, slot {node.booted} boots again")
        return event
    finally:
        b.close()


def upgrade(source: str, force: bool = False, reboot: bool = True, tries: int = 1) -> int:
    if os.geteuid() != 0:
        raise BasaltError.simple("basalt upgrade: permission denied", hint="run it as root")
    fd = lock()
    try:
        node = Node()
        check_node(node.booted, node.boot().read())
        limit = 0
        if source.startswith(("http://", "https://")):  # refused from its first bytes, not after the download
            head = bundle.open_head(download_head(source), node.key, node.work, source)
            if preflight(node, head, source, force) is None:
                return 0
            limit = expected_size(head)
        path, downloaded = fetch(source, limit)
        try:
            event = install_bundle(node, path, source, force, tries)
        finally:
            if downloaded:
                os.unlink(path)
    finally:
        os.close(fd)
    if reboot and event["result"] == "armed":
        say("rebooting into the trial")
        request_reboot()
    return 0


def rollback(reboot: bool = True) -> int:
    if os.geteuid() != 0:
        raise BasaltError.simple("basalt rollback: permission denied", hint="run it as root")
    fd = lock()
    try:
        booted, backend = slots.booted(), bootsel.backend()
        sel = backend.read()
        check_node(booted, sel)
        target = slots.other(booted)
        info = slots.build_info(target)
        if not info:
            raise BasaltError.simple(f"slot {target} holds no complete version: nothing to roll back to",
                                     hint="basalt status shows both slots")
        state = slots.load_state()
        failed = state.get("failed", {}).get(str(info.get("version")))
        if failed:
            raise BasaltError.simple(f"slot {target} holds {info.get('version')}, which failed on this node "
                                     f"({failed.get('reason')})", hint="upgrade to a good version instead")
        if state.get("committed", {}).get(target) != info.get("version"):
            raise BasaltError.simple(f"slot {target} holds {info.get('version')}, which has not passed a health "
                                     "gate on this node", hint="basalt upgrade boots a version on trial first")
        with slots.writable_boot():
            backend.commit(target)
        slots.record({"result": "rolled back", "version": info.get("version"), "image": info.get("image"),
                      "slot": target, "from": slots.build_info(booted).get("version")})
        say(f"slot {target} ({info.get('version')}) is the committed slot from the next boot")
    finally:
        os.close(fd)
    if reboot:
        request_reboot()
    return 0
