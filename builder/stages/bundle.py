"""bundle: the upgrade bundle ``<image>-<version>.bundle`` (agent/upgrade/bundle.py has the format):
this build's kernel (as a slot holds it), initramfs and squashfs, with a signed manifest.

The stage's id covers the public key, so a new key re-signs; the secret key's path is an
option, its content never is."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Any

from agent import layout
from agent.errors import BasaltError, Problem
from agent.upgrade import bundle
from builder import signing
from builder.arch import Architecture
from builder.media import abdisk, oci
from builder.stages import StageContext

NAME = "bundle"
VERSION = 1
VOLATILE = False
INPUTS = ("rootfs", "squashfs", "initramfs")
SOURCES = ("agent/upgrade/bundle.py", "builder/signing.py", "builder/media/abdisk.py", "builder/media/oci.py")
PUBLISH = (("upgrade.bundle", "{name}-{version}.bundle"), ("upgrade.oci.tar", "{name}-{version}.oci.tar"))
# The OCI upgrade image's entry point: the system-upgrade-controller's job mounts the host's root at
# /host (and shares its PID namespace), so basalt upgrade runs on the host, and its reboot is the host's.
UPGRADE_HOST = """#!/bin/sh
# Basalt upgrade job (system-upgrade-controller): the host's root is at /host.
set -e
mkdir -p /host{downloads}
cp /payload/upgrade.bundle /host{downloads}/oci-upgrade.bundle
rc=0
chroot /host /usr/sbin/basalt upgrade "$@" {downloads}/oci-upgrade.bundle || rc=$?
rm -f /host{downloads}/oci-upgrade.bundle
exit $rc
""".replace("{downloads}", layout.UPGRADE_DOWNLOADS)
TOOLS = signing.TOOLS
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["arch", "name", "version", "source_date_epoch", "signing_key", "public_key"],
    "properties": {
        "arch": {"type": "string"}, "name": {"type": "string"}, "version": {"type": "string"},
        "source_date_epoch": {"type": "integer"}, "signing_key": {"type": "string"},
        "public_key": {"type": "string"},
    },
}


def _file_info(name: str, size: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, epoch, 0o644, "root", "root"
    return info


def _digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        return bundle.sha256_stream(f)


def write(dest: Path, parts: dict[str, Path], name: str, version: str, arch: str, epoch: int,
          key: signing.SigningKey, work: Path) -> None:
    """The bundle at ``dest``: the signed manifest first, then the parts, each in one tar member."""
    built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    man = bundle.manifest(name, version, arch, built, {part: _digest(path) for part, path in parts.items()})
    manifest_path = work / bundle.MANIFEST
    manifest_path.write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")
    sig = signing.sign(key, manifest_path, f"basalt bundle {name} {version} {arch}")
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, path in ((bundle.MANIFEST, manifest_path), (bundle.SIGNATURE, sig), *parts.items()):
            with path.open("rb") as f:
                tar.addfile(_file_info(member, path.stat().st_size, epoch), f)


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    kernel = abdisk.slot_kernel(options, ctx.input("rootfs") / "kernel" / "vmlinuz")
    if isinstance(kernel, bytes):
        (ctx.work / bundle.KERNEL).write_bytes(kernel)
        kernel = ctx.work / bundle.KERNEL
    parts = {bundle.KERNEL: kernel, bundle.INITRD: ctx.input("initramfs") / "initrd.img",
             bundle.ROOT: ctx.input("squashfs") / "rootfs.squashfs"}
    key = signing.pair(Path(options["signing_key"]))
    if key.public_text() != options["public_key"]:
        raise BasaltError(Problem(f"{key.public} changed since the build was planned", hint="build again"))
    write(ctx.out / "upgrade.bundle", parts, options["name"], options["version"], options["arch"],
          options["source_date_epoch"], key, ctx.work)
    upgrade_image(ctx.out / "upgrade.oci.tar", ctx.out / "upgrade.bundle", ctx.input("rootfs") / "root/usr/bin/busybox",
                  options)


def upgrade_image(out: Path, bundle_path: Path, busybox: Path, options: dict[str, Any]) -> str:
    """The bundle as an OCI image, for Kubernetes (upgrade.kubernetes): a static busybox, the
    job's script, and the bundle at /payload/upgrade.bundle; built without a container engine."""
    entry = oci.entry
    entries = [entry("bin", tarfile.DIRTYPE), entry("bin/busybox", data=busybox.read_bytes()),
               *[entry(f"bin/{tool}", tarfile.SYMTYPE, 0o777, link="busybox")
                 for tool in ("sh", "cp", "mkdir", "rm", "chroot")],
               entry("bin/upgrade-host", data=UPGRADE_HOST.encode()),
               entry("payload", tarfile.DIRTYPE), entry("payload/upgrade.bundle", mode=0o644,
                                                        data=bundle_path.read_bytes()),
               entry("tmp", tarfile.DIRTYPE, 0o1777)]
    return oci.archive(out, entries, f"basalt/{options['name']}:{options['version']}",
                       Architecture(options["arch"]).to_oci(), ("/bin/upgrade-host",), compress=False,
                       labels={"io.basalt.image": options["name"], "io.basalt.version": options["version"]})
