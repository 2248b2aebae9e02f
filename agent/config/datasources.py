"""Datasources: a NoCloud seed (a filesystem labelled ``cidata``/``CIDATA`` holding
``user-data`` and ``meta-data``) and an HTTP(S) URL given as ``basalt.datasource=URL``.

At boot the agent copies what it finds to a fixed place (the seed under /run, the URL's
last good copy on the state partition), so ``sources.gather`` and ``basalt config show``
read plain files. User-data is config YAML (``#cloud-config`` or none), or a script when
it starts with ``#!``. The URL is fetched once the network is up, with retries; a changed
copy is re-applied by the agent.
"""

from __future__ import annotations

import os
import time

from agent import files, http, layout

SEED_LABELS = (b"cidata", b"CIDATA")
NOCLOUD_DIR = layout.RUN_NOCLOUD
HTTP_DIR = layout.HTTP_DATASOURCE
SEED_MOUNT = layout.RUN_CIDATA
# Merge order: user-data/meta-data dropped on the boot partition, a seed, then the URL.
DIRS = (layout.RUN_MEDIUM, NOCLOUD_DIR, HTTP_DIR)


def fs_label(head: bytes) -> tuple[str, bytes] | None:
    """(filesystem type, label) from the first 36 KiB of a block device: ISO 9660, FAT or ext."""
    if head[32769:32774] == b"CD001":
        return "iso9660", head[32808:32840].rstrip(b" \0")
    if head[1080:1082] == b"\x53\xef":
        return "ext4", head[1144:1160].rstrip(b"\0")
    if head[510:512] == b"\x55\xaa":
        if head[82:87] == b"FAT32":
            return "vfat", head[71:82].rstrip(b" \0")
        if head[54:57] == b"FAT":
            return "vfat", head[43:54].rstrip(b" \0")
    return None


SEED_SOURCES = ("nocloud", "cdrom")  # the data_sources names that let a node read a NoCloud seed


def seed_allowed(mode: str, data_sources: object) -> tuple[bool, str]:
    """May a node in ``mode`` (live, installed) read a NoCloud seed, given the ``data_sources`` its
    own config sets (None when unset)? A live node (booted from its ISO, provisioned by the seed
    beside it) may unless its config says otherwise; an installed node only when its config names
    nocloud: a USB stick labelled CIDATA and a power cycle must not be a way in. (allowed, why)."""
    if data_sources is None:
        if mode == "live":
            return True, "a live node reads a seed unless data_sources says otherwise"
        return False, "an installed node reads a seed only when its config's data_sources names nocloud"
    named = [s for s in data_sources if s in SEED_SOURCES] if isinstance(data_sources, list) else []
    if named:
        return True, f"data_sources names {named[0]}"
    return False, "the config's data_sources does not name nocloud"


def find_seed(sys_block: str = "/sys/class/block", dev: str = "/dev") -> tuple[str, str] | None:
    """The first block device whose filesystem is labelled cidata: (device, fstype)."""
    for name in sorted(os.listdir(sys_block)) if os.path.isdir(sys_block) else []:
        if name.startswith(("loop", "ram", "zram")):
            continue
        path = os.path.join(dev, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # e.g. an empty CD drive
        try:
            head = os.pread(fd, 36864, 0)
        except OSError:
            continue
        finally:
            os.close(fd)
        found = fs_label(head)
        if found and found[1] in SEED_LABELS:
            return path, found[0]
    return None


def copy_seed(mount_dir: str, dest: str = NOCLOUD_DIR) -> list[str]:
    """Copy user-data and meta-data from a mounted seed; the names copied."""
    os.makedirs(dest, exist_ok=True)
    copied = []
    for name in ("user-data", "meta-data"):
        src = os.path.join(mount_dir, name)
        if not os.path.isfile(src):
            continue
        with open(src, "rb") as f:
            data = f.read()
        write(os.path.join(dest, name), data)
        copied.append(name)
    return copied


def collect_seed(device: str, fstype: str) -> str:
    """Mount the cidata seed ``device`` read-only, copy it to NOCLOUD_DIR, unmount."""
    from agent import system
    os.makedirs(SEED_MOUNT, exist_ok=True)
    system.mount(device, SEED_MOUNT, fstype, system.MS_RDONLY, "")
    try:
        copy_seed(SEED_MOUNT)
    finally:
        system.umount(SEED_MOUNT, 0)
    return device


def write(path: str, data: bytes) -> None:
    """Atomic, owner-only (user-data may hold secrets); scripts are made executable."""
    files.write_atomic(path, data, 0o700 if data.startswith(b"#!") else 0o600)


def is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def get(url: str, attempts: int = 5, delay: float = 2.0, timeout: float = 15.0, sleep: object = time.sleep,
        limit: int = 4 << 20) -> bytes:
    """The body at ``url`` (at most ``limit`` bytes), with retries and backoff (a 404 too: at boot
    the server may not have it yet); OSError after the last attempt."""
    return http.get(url, limit, attempts, delay, timeout, sleep=sleep)  # type: ignore[arg-type]


def fetch_url(url: str, dest: str = HTTP_DIR, attempts: int = 5, delay: float = 2.0,
              timeout: float = 15.0, sleep: object = time.sleep) -> bool:
    """Fetch user-data from ``url`` into ``dest`` with retries and backoff; True when the
    stored copy changed. Raises OSError after the last attempt."""
    try:
        data = get(url, attempts, delay, timeout, sleep)
    except OSError as exc:
        raise OSError(f"datasource {exc}") from None
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, "user-data")
    try:
        with open(target, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    write(target, data)
    return True
