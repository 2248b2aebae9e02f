"""Rootfs backends: unpack a resolved package set into a directory tree.

Both take the same inputs (the locked rootfs packages and their verified
blobs) and fill ``target``. mmdebstrap is the default: it extracts exactly the
locked set with no chroot, no mounts and no maintainer scripts.
diskimage-builder is optional (the ``[dib]`` extra); it bootstraps in its own
chroot with its own package resolution, so it is for users who already build
with DIB elements.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, ClassVar, Protocol

from builder import host, progress


class Backend(Protocol):
    @property
    def TOOLS(self) -> dict[str, str]: ...  # a class constant on each backend

    def unpack(self, packages: list[tuple[dict[str, Any], Path]], target: Path, options: dict[str, Any],
               work: Path) -> None: ...


class Mmdebstrap:
    TOOLS: ClassVar[dict[str, str]] = {"mmdebstrap": "mmdebstrap", "apt-get": "apt"}

    def unpack(self, packages: list[tuple[dict[str, Any], Path]], target: Path, options: dict[str, Any],
               work: Path) -> None:
        repo = work / "repo"
        (repo / "pool").mkdir(parents=True)
        stanzas = []
        for row, blob in packages:
            deb = repo / "pool" / f"{row['name']}_{row['arch']}.deb"
            try:
                os.link(blob, deb)
            except OSError:
                shutil.copyfile(blob, deb)
            # Dependencies were resolved (and exclusions applied) by fetch: the local
            # index lists none, so apt extracts exactly the locked set.
            stanzas.append(f"Package: {row['name']}\nVersion: {row['version']}\nArchitecture: {row['arch']}\n"
                           f"Filename: pool/{deb.name}\nSize: {row['size']}\nSHA256: {row['sha256']}\n")
        (repo / "Packages").write_text("\n".join(stanzas))
        mode = "root" if os.geteuid() == 0 else "unshare"
        argv = ["mmdebstrap", "--variant=extract", f"--mode={mode}", "--skip=chroot/mount", "--skip=check/qemu",
                f"--architectures={packages[0][0]['arch'] if packages else 'amd64'}",
                "--include=" + ",".join(row["name"] for row, _ in packages),
                options["suite"], str(target), f"deb [trusted=yes] copy://{repo} ./"]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(options["source_date_epoch"])}
        host.run(argv, "mmdebstrap", "see the log above; 'inv setup' installs mmdebstrap", env, work / "mmdebstrap.log")


class DiskImageBuilder:
    TOOLS: ClassVar[dict[str, str]] = {
        "disk-image-create": "the [dib] extra: pip install -e '.[dib]'", "debootstrap": "debootstrap",
        "qemu-img": "qemu-utils", "kpartx": "kpartx", "sudo": "sudo"}

    def unpack(self, packages: list[tuple[dict[str, Any], Path]], target: Path, options: dict[str, Any],
               work: Path) -> None:
        # DIB's apt gets exactly the plan's archives (its default adds a security host of its own).
        sources = "\n".join(f"s{i}{j}:deb {src['uri']} {suite} {' '.join(src['components'])}"
                            for i, src in enumerate(options["sources"]) for j, suite in enumerate(src["suites"]))
        env = {**os.environ, "PATH": host.search_path(), "DIB_RELEASE": options["suite"],
               "DIB_DISTRIBUTION_MIRROR": options["sources"][0]["uri"],
               "DIB_APT_SOURCES_CONF": sources + "\n",
               "DIB_DEBIAN_COMPONENTS": "main", "DIB_APT_MINIMAL_CREATE_INTERFACES": "0",
               "TMPDIR": str(work), "DIB_NO_TMPFS": "1", "DIB_DEBOOTSTRAP_CACHE": "0"}
        names = ",".join(row["name"] for row, _ in packages)
        arch = packages[0][0]["arch"] if packages else "amd64"
        argv = ["disk-image-create", "-a", arch, "-t", "tar", "-o", str(work / "dib"), "--no-tmpfs",
                "-p", names, "debian-minimal"]
        with progress.step("diskimage-builder (chroot bootstrap; takes minutes)"):
            host.run(argv, "disk-image-create", "diskimage-builder needs root, debootstrap and the [dib] extra",
                 env, work / "dib.log")
        target.mkdir(parents=True, exist_ok=True)
        # Our own build's tarball, owners kept. (The filter argument exists from Python 3.11.4;
        # Debian 12 ships 3.11.2, which extracts this way by default.)
        kwargs: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        with tarfile.open(work / "dib.tar") as tar:
            tar.extractall(target, numeric_owner=True, **kwargs)


BACKENDS: dict[str, Backend] = {"mmdebstrap": Mmdebstrap(), "dib": DiskImageBuilder()}
